// Code highlighting with highlight.js, fetched on demand: its core and each language arrive (as chunks of their own
// under /chat/assets, split out by esbuild) the first time a reply shows a block in that language, so the first
// paint carries none of it. A block whose language is still on its way is shown plain and painted when it arrives.
import type { HLJSApi, LanguageFn } from "highlight.js";

type Module = Promise<{ default: LanguageFn }>;

// One entry per language module; each import() is a chunk. Names a code fence may use are in ALIASES.
const LANGUAGES: Record<string, () => Module> = {
  bash: () => import("highlight.js/lib/languages/bash"),
  c: () => import("highlight.js/lib/languages/c"),
  cpp: () => import("highlight.js/lib/languages/cpp"),
  csharp: () => import("highlight.js/lib/languages/csharp"),
  css: () => import("highlight.js/lib/languages/css"),
  diff: () => import("highlight.js/lib/languages/diff"),
  dockerfile: () => import("highlight.js/lib/languages/dockerfile"),
  go: () => import("highlight.js/lib/languages/go"),
  ini: () => import("highlight.js/lib/languages/ini"),
  java: () => import("highlight.js/lib/languages/java"),
  javascript: () => import("highlight.js/lib/languages/javascript"),
  json: () => import("highlight.js/lib/languages/json"),
  kotlin: () => import("highlight.js/lib/languages/kotlin"),
  makefile: () => import("highlight.js/lib/languages/makefile"),
  markdown: () => import("highlight.js/lib/languages/markdown"),
  nginx: () => import("highlight.js/lib/languages/nginx"),
  php: () => import("highlight.js/lib/languages/php"),
  powershell: () => import("highlight.js/lib/languages/powershell"),
  python: () => import("highlight.js/lib/languages/python"),
  ruby: () => import("highlight.js/lib/languages/ruby"),
  rust: () => import("highlight.js/lib/languages/rust"),
  shell: () => import("highlight.js/lib/languages/shell"),
  sql: () => import("highlight.js/lib/languages/sql"),
  swift: () => import("highlight.js/lib/languages/swift"),
  typescript: () => import("highlight.js/lib/languages/typescript"),
  xml: () => import("highlight.js/lib/languages/xml"),
  yaml: () => import("highlight.js/lib/languages/yaml"),
};

// What people write after ``` → the language above. `shell` is usually a script, so bash; a session with prompts
// is `console`.
const ALIASES: Record<string, string> = {
  ...{ sh: "bash", zsh: "bash", shell: "bash", console: "shell", shellsession: "shell" },
  ...{ py: "python", python3: "python", js: "javascript", jsx: "javascript", mjs: "javascript" },
  ...{ ts: "typescript", tsx: "typescript", yml: "yaml", golang: "go", rs: "rust", "c++": "cpp", cc: "cpp" },
  ...{ h: "cpp", hpp: "cpp", cxx: "cpp", html: "xml", xhtml: "xml", svg: "xml", docker: "dockerfile" },
  ...{ patch: "diff", toml: "ini", make: "makefile", cs: "csharp", "c#": "csharp", kt: "kotlin", rb: "ruby" },
  ...{ ps1: "powershell", md: "markdown", jsonc: "json", postgresql: "sql", mysql: "sql", sqlite: "sql" },
};

// Grammars that embed another: a Dockerfile's RUN lines, a console's commands, HTML's <script> and <style>.
const EMBEDS: Record<string, string[]> = { dockerfile: ["bash"], shell: ["bash"], xml: ["css", "javascript"] };

let core: HLJSApi | null = null;
const ready = new Set<string>();
const pending = new Map<string, Promise<void>>();

/** The language a fence name stands for, or null when it is not one highlighted here (the block stays plain). */
export function languageOf(name: string): string | null {
  const key = Object.hasOwn(ALIASES, name) ? ALIASES[name] : name;
  return Object.hasOwn(LANGUAGES, key) ? key : null;
}

// A streamed reply is re-rendered every frame; only its last code block changes, so the others come from here
// (least recently used first out: a block that keeps being shown stays).
const cache = new Map<string, string>();
const CACHE_SIZE = 64;

/** Highlighted HTML (escaped by highlight.js) when the language is here; null shows the code plain, and for a
 * known language that is still to come, fetches it (then `paintWaiting` repaints the blocks marked for it). */
export function highlight(code: string, language: string): string | null {
  if (!core || !ready.has(language)) {
    if (languageOf(language) === language) void load(language);
    return null;
  }
  const key = language + "\u0000" + code;
  let html = cache.get(key);
  if (html === undefined) {
    html = core.highlight(code, { language, ignoreIllegals: true }).value;
    if (cache.size >= CACHE_SIZE) cache.delete(cache.keys().next().value as string);
  } else {
    cache.delete(key);
  }
  cache.set(key, html);
  return html;
}

/** Settles once the language is in (and its waiting blocks painted) or failed to come (offline, say: the next block
 * in it tries again). */
function load(language: string): Promise<void> {
  const loading =
    pending.get(language) ??
    fetchLanguage(language).then(
      () => paintWaiting(language),
      () => void pending.delete(language),
    );
  pending.set(language, loading);
  return loading;
}

async function fetchLanguage(language: string): Promise<void> {
  const [hljs, grammar] = await Promise.all([loadCore(), LANGUAGES[language]()]);
  // Before its first block is painted; one that fails to come leaves only the embedded part plain.
  await Promise.all((EMBEDS[language] ?? []).map((embedded) => load(embedded)));
  hljs.registerLanguage(language, grammar.default);
  ready.add(language);
}

let corePromise: Promise<HLJSApi> | null = null;

function loadCore(): Promise<HLJSApi> {
  corePromise ??= import("highlight.js/lib/core").then(
    (module) => (core = module.default),
    (error: unknown) => {
      corePromise = null; // the next block tries again
      throw error;
    },
  );
  return corePromise;
}

/** Blocks shown before their language arrived carry `data-highlight`; paint them now, in place. */
function paintWaiting(language: string): void {
  for (const code of document.querySelectorAll<HTMLElement>(`code[data-highlight="${language}"]`)) {
    const html = highlight(code.textContent ?? "", language);
    if (html === null) continue;
    code.innerHTML = html; // highlight.js escapes the code it wraps in spans
    code.classList.add("hljs");
    delete code.dataset.highlight;
  }
}
