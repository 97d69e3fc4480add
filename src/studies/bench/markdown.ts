/** Markdown tables and number formats for benchmark reports. */

export type Cell = string | number;

/** A GitHub-flavoured Markdown table. */
export function markdownTable(headers: readonly string[], rows: readonly (readonly Cell[])[]): string {
  // A column whose cells all start with a number ("4.12×", "1.50 KiB") is right-aligned.
  const numeric = headers.map((_, j) => rows.length > 0 && rows.every((r) => /^-?\d/.test(String(r[j]))));
  const text = rows.map((r) => r.map((c) => String(c)));
  const lines = [
    `| ${headers.join(' | ')} |`,
    `|${headers.map((_, j) => (numeric[j] ? '---:' : '---')).join('|')}|`,
    ...text.map((r) => `| ${r.join(' | ')} |`),
  ];
  return lines.join('\n') + '\n';
}

/** 1536 → "1.50 KiB"; exact bytes stay available in the JSON output. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  let x = n;
  while (Math.abs(x) >= 1024 && u < units.length - 1) {
    x /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${x.toFixed(2)} ${units[u]}`;
}

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
