/** Markdown tables and number formats for benchmark reports. */
import { markdownTable as studyTable } from '../markdown.js';

export type Cell = string | number;

/** A GitHub-flavoured Markdown table whose numeric columns (every cell starts with a number: "4.12×", "1.50 KiB") are right-aligned. */
export function markdownTable(headers: readonly string[], rows: readonly (readonly Cell[])[]): string {
  const numeric = headers.map((_, j) => rows.length > 0 && rows.every((r) => /^-?\d/.test(String(r[j]))));
  return `${studyTable(
    [...headers],
    rows.map((r) => [...r]),
    numeric,
  )}\n`;
}

export { formatBytes } from '../../util/format.js';

/** Seconds in a readable unit: 0.00042 → "420 µs". */
export function formatSeconds(s: number): string {
  if (s >= 1) return `${s.toFixed(2)} s`;
  if (s >= 1e-3) return `${(s * 1e3).toFixed(2)} ms`;
  return `${(s * 1e6).toFixed(1)} µs`;
}

/** A ratio as "4.12×". */
export function formatRatio(r: number): string {
  return Number.isFinite(r) ? `${r.toFixed(2)}×` : '–';
}
