// Light or dark: the system's choice unless the user picked the other one (kept in localStorage).
import { THEME_KEY } from "./theme-key";
export type Theme = "light" | "dark";

const system = window.matchMedia("(prefers-color-scheme: dark)");

export function currentTheme(): Theme {
  const chosen = document.documentElement.dataset.theme;
  if (chosen === "light" || chosen === "dark") return chosen;
  return system.matches ? "dark" : "light";
}

/** Switch to the other theme; choosing what the system already shows goes back to following the system. */
export function toggleTheme(): Theme {
  const next: Theme = currentTheme() === "dark" ? "light" : "dark";
  const systemTheme: Theme = system.matches ? "dark" : "light";
  const following = next === systemTheme;
  try {
    if (following) localStorage.removeItem(THEME_KEY);
    else localStorage.setItem(THEME_KEY, next);
  } catch {
    // storage blocked (private mode): the choice lasts for this page only
  }
  if (following) delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = next;
  return next;
}
