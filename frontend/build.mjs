// Bundle the chat page into src/clawdbot/static: hashed assets plus index.html that names them.
// Run by the Python install command (hatch_build.py) and by `npm run build`.
import * as esbuild from "esbuild";
import { mkdirSync, readFileSync, rmSync, writeFileSync, copyFileSync } from "node:fs";
import { basename } from "node:path";
import { gzipSync } from "node:zlib";

const here = new URL(".", import.meta.url).pathname;
const out = new URL("../src/clawdbot/static/", import.meta.url).pathname;
rmSync(out, { recursive: true, force: true });
mkdirSync(out + "assets", { recursive: true });

const result = await esbuild.build({
  // The boot script is tiny and blocking (it applies a chosen theme before the first paint); the app is a module.
  entryPoints: { app: here + "src/main.ts", boot: here + "src/boot.ts" },
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2022", "chrome110", "firefox115", "safari16"],
  outdir: out + "assets",
  entryNames: "[name]-[hash]",
  assetNames: "[name]-[hash]",
  metafile: true,
  legalComments: "eof",
  logLevel: "warning",
});

const outputs = Object.keys(result.metafile.outputs).map((path) => basename(path));
const js = outputs.find((name) => name.startsWith("app-") && name.endsWith(".js"));
const boot = outputs.find((name) => name.startsWith("boot-") && name.endsWith(".js"));
const css = outputs.find((name) => name.endsWith(".css"));
copyFileSync(here + "public/icon.svg", out + "assets/icon.svg");
const html = readFileSync(here + "index.html", "utf8")
  .replaceAll("%APP_JS%", `/chat/assets/${js}`)
  .replaceAll("%BOOT_JS%", `/chat/assets/${boot}`)
  .replaceAll("%APP_CSS%", `/chat/assets/${css}`);
writeFileSync(out + "index.html", html);

const sizes = {};
for (const name of [js, boot, css, "icon.svg"]) {
  const bytes = readFileSync(out + "assets/" + name);
  sizes[name] = { bytes: bytes.length, gzip: gzipSync(bytes, { level: 9 }).length };
}
const total = Object.values(sizes).reduce((sum, s) => sum + s.gzip, 0);
writeFileSync(out + "build.json", JSON.stringify({ sizes, gzip_total: total }, null, 1));
console.log(`chat page built: ${Object.entries(sizes).map(([n, s]) => `${n} ${s.bytes} B (${s.gzip} B gzip)`).join(", ")}`);
