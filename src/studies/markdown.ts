/** Markdown for study reports: tables and signed numbers. */

/** A GitHub-flavoured table; `right[i]` right-aligns column i (by default every column but the first). */
export function markdownTable(headers: string[], rows: (string | number)[][], right: boolean[] = headers.map((_, i) => i > 0)): string {
  const line = (cells: (string | number)[]) => `| ${cells.map((c) => String(c).replace(/\|/g, '\\|')).join(' | ')} |`;
  const rule = `|${right.map((r) => (r ? '---:' : ':---')).join('|')}|`;
  return [line(headers), rule, ...rows.map(line)].join('\n');
}

/** Fixed decimals with an explicit sign, for changes: +0.0123, −0.0040. */
export function signed(x: number, digits: number): string {
  const s = Math.abs(x).toFixed(digits);
  if (Number(s) === 0) return (0).toFixed(digits);
  return (x < 0 ? '−' : '+') + s;
}
