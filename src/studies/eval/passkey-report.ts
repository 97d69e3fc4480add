/** `eval passkey` output: a heat-map per spec (depth × length, like the paper's needle figures) and Markdown. */

import { markdownTable } from '../markdown.js';
import type { TopLevelSpec } from '../plot.js';
import type { PasskeySpecResult, PasskeyStudy } from './passkey.js';

export function passkeyHeatmap(r: PasskeySpecResult, s: PasskeyStudy): TopLevelSpec {
  const values = r.cells.map((c) => ({ ...c, label: `${c.correct}/${c.n}` }));
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: `Pass-key retrieval, kv ${r.kv}`,
      subtitle: [
        `${r.correct}/${r.n} correct (${(100 * r.accuracy).toFixed(0)}%), ${s.n} trial(s) per cell, seed ${s.seed}`,
        'depth 0 = right after the instruction, 1 = right before the question',
      ],
    },
    data: { values },
    width: Math.max(160, 70 * s.lengths.length),
    height: Math.max(120, 34 * s.depths.length),
    encoding: {
      x: { field: 'length', type: 'ordinal', title: 'prompt length (tokens)', sort: s.lengths },
      y: { field: 'depth', type: 'ordinal', title: 'needle depth', sort: s.depths },
    },
    layer: [
      {
        mark: { type: 'rect', stroke: 'white', strokeWidth: 1 },
        encoding: {
          color: { field: 'accuracy', type: 'quantitative', title: 'accuracy', scale: { domain: [0, 1], scheme: 'redyellowgreen' } },
        },
      },
      {
        mark: { type: 'text', fontSize: 12 },
        encoding: {
          text: { field: 'label', type: 'nominal' },
          // Dark cells (both ends of the scale) get white labels.
          color: { condition: { test: 'datum.accuracy > 0.8 || datum.accuracy < 0.2', value: 'white' }, value: 'black' },
        },
      },
    ],
    config: { view: { stroke: null }, axis: { labelAngle: 0 } },
  } as TopLevelSpec;
}

/** A file-name-safe form of a spec string. */
export function specFileName(kv: string): string {
  return kv.replace(/[^A-Za-z0-9._-]+/g, '_');
}

export function passkeyMarkdown(s: PasskeyStudy): string {
  const parts = [
    markdownTable(
      ['kv cache', 'correct', 'accuracy'],
      s.results.map((r) => [r.kv, `${r.correct}/${r.n}`, `${(100 * r.accuracy).toFixed(1)}%`]),
    ),
  ];
  for (const r of s.results) {
    const rows = s.depths.map((d) => [
      String(d),
      ...s.lengths.map((L) => {
        const c = r.cells.find((x) => x.length === L && x.depth === d)!;
        return `${c.correct}/${c.n}`;
      }),
    ]);
    parts.push(`**${r.kv}** (rows: needle depth, columns: prompt length)\n\n${markdownTable(['depth', ...s.lengths.map(String)], rows)}`);
  }
  return `${parts.join('\n\n')}\n`;
}
