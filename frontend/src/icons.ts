// Line icons (24×24, stroked with currentColor), built as SVG nodes; `<i data-icon="name">` in index.html is filled in.

const PATHS = {
  menu: "M4 6h16M4 12h16M4 18h16",
  plus: "M12 5v14M5 12h14",
  send: "M12 19V5M5 12l7-7 7 7",
  stop: "M7 7h10v10H7z",
  copy: "M9 9h10v10H9zM5 15V5h10",
  edit: "M4 20h4L19 9l-4-4L4 16zM13.5 6.5l4 4",
  regenerate: "M20 12a8 8 0 1 1-2.3-5.7M20 4v4h-4",
  continue: "M5 6l7 6-7 6zM13 6l7 6-7 6z",
  previous: "M15 6l-6 6 6 6",
  next: "M9 6l6 6-6 6",
  settings: "M4 6h9m4 0h3M4 12h3m4 0h9M4 18h11m4 0h1M13 4v4M7 10v4M15 16v4",
  moon: "M20 14.5A8 8 0 0 1 9.5 4a8 8 0 1 0 10.5 10.5z",
  sun:
    "M12 16a4 4 0 1 0 0-8 4 4 0 0 0 0 8zM12 2v2M12 20v2M4.9 4.9l1.4 1.4M17.7 17.7l1.4 1.4M2 12h2M20 12h2" +
    "M4.9 19.1l1.4-1.4M17.7 6.3l1.4-1.4",
  pin: "M12 17v5M8 3h8l-1 6 3 4H6l3-4z",
  trash: "M4 7h16M10 11v6M14 11v6M6 7l1 13h10l1-13M9 7V4h6v3",
  more: "M5 12h.01M12 12h.01M19 12h.01",
  search: "M11 18a7 7 0 1 0 0-14 7 7 0 0 0 0 14zM20 20l-4-4",
  download: "M12 4v12M6 10l6 6 6-6M4 20h16",
  chart: "M4 20h16M7 16v-5M12 16V6M17 16v-8",
  close: "M6 6l12 12M18 6L6 18",
  check: "M5 12l5 5 9-11",
  user: "M12 12a4 4 0 1 0 0-8 4 4 0 0 0 0 8zM4 21a8 8 0 0 1 16 0",
  key: "M8 16a4 4 0 1 0 0-8 4 4 0 0 0 0 8zM12 12h9M18 12v3M21 12v2",
  lock: "M6 11h12v10H6zM8.5 11V7.5a3.5 3.5 0 0 1 7 0V11",
  shield: "M12 3l8 3v6c0 4.5-3.5 8-8 9-4.5-1-8-4.5-8-9V6z",
  logout: "M10 4H5v16h5M15 8l4 4-4 4M19 12H9",
} as const;

export type IconName = keyof typeof PATHS;
const SVG = "http://www.w3.org/2000/svg";

export function icon(name: IconName): SVGSVGElement {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", `icon icon-${name}`);
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", PATHS[name]);
  svg.append(path);
  return svg;
}

export function fillIcons(root: ParentNode): void {
  for (const slot of root.querySelectorAll<HTMLElement>("i[data-icon]")) {
    const name = slot.dataset.icon as IconName;
    if (name in PATHS) slot.replaceWith(icon(name));
  }
}
