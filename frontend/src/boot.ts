// Runs before the first paint (a blocking script, as CSP allows no inline one), so a chosen theme never flashes.
import { THEME_KEY } from "./theme-key";

try {
  const chosen = localStorage.getItem(THEME_KEY);
  if (chosen === "light" || chosen === "dark") document.documentElement.dataset.theme = chosen;
} catch {
  // storage blocked: follow the system
}
