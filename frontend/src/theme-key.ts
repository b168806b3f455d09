// Shared by the boot script and the page; a module of its own so the boot script stays a few bytes.
export const THEME_KEY = "clawdbot.theme";
