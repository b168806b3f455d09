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

const common = {
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
};
// The boot script is tiny and blocking (it applies a chosen theme before the first paint): a classic script, so
// built on its own, as code splitting could give it an import.
const boot = await esbuild.build({ ...common, entryPoints: { boot: here + "src/boot.ts" } });
// The app is a module; what it imports with import() (highlight.js and each language) is split into chunks that
// load when first needed, from next to the app (relative URLs, so a proxy's path prefix does not matter).
const app = await esbuild.build({
  ...common,
  entryPoints: { app: here + "src/main.ts" },
  splitting: true,
  chunkNames: "[name]-[hash]",
});

const names = (result) => Object.keys(result.metafile.outputs).map((path) => basename(path));
const entry = (result, prefix, suffix) => names(result).find((n) => n.startsWith(prefix) && n.endsWith(suffix));
const js = entry(app, "app-", ".js");
const bootJs = entry(boot, "boot-", ".js");
const css = entry(app, "app-", ".css");
// Chunks the app imports statically (esbuild's shared helpers) load with it: preloaded, not found one by one.
const [, appOutput] = Object.entries(app.metafile.outputs).find(([path]) => basename(path) === js);
const withApp = appOutput.imports.filter((i) => i.kind === "import-statement").map((i) => basename(i.path));
const later = names(app).filter((name) => name.endsWith(".js") && name !== js && !withApp.includes(name));
copyFileSync(here + "public/icon.svg", out + "assets/icon.svg");
const preload = withApp.map((name) => `<link rel="modulepreload" href="/chat/assets/${name}">`).join("\n");
const html = readFileSync(here + "index.html", "utf8")
  .replaceAll("%APP_JS%", `/chat/assets/${js}`)
  .replaceAll("%BOOT_JS%", `/chat/assets/${bootJs}`)
  .replaceAll("%APP_CSS%", `/chat/assets/${css}`)
  .replace("%MODULE_PRELOAD%", preload);
writeFileSync(out + "index.html", html);

function measure(files) {
  const sizes = {};
  for (const name of files) {
    const bytes = readFileSync(out + "assets/" + name);
    sizes[name] = { bytes: bytes.length, gzip: gzipSync(bytes, { level: 9 }).length };
  }
  return sizes;
}
const gzip = (sizes) => Object.values(sizes).reduce((sum, s) => sum + s.gzip, 0);
// What the first paint loads, and what loads later (one chunk per highlighted language, and the shared ones).
const firstPaint = measure([js, ...withApp, bootJs, css, "icon.svg"]);
const onDemand = measure(later);
const report = {
  first_paint: firstPaint,
  first_paint_gzip: gzip(firstPaint),
  chunks: onDemand,
  chunks_gzip: gzip(onDemand),
  gzip_total: gzip(firstPaint) + gzip(onDemand),
};
writeFileSync(out + "build.json", JSON.stringify(report, null, 1));
const listed = Object.entries(firstPaint).map(([n, s]) => `${n} ${s.bytes} B (${s.gzip} B gzip)`).join(", ");
console.log(`chat page built: ${listed}; ${later.length} chunks loaded on demand (${report.chunks_gzip} B gzip)`);
