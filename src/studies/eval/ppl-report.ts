/** `eval ppl` output: the JSON line, a Markdown table, and plain text. */

import { markdownTable, signed } from '../markdown.js';
import { baselineOf, type PplStudy, type SpecNll } from './ppl.js';

export interface SpecRow extends SpecNll {
  delta_nll: number;
  delta_ppl: number;
}

export interface PplJson {
  results: SpecRow[];
  /** What delta_* are measured against: "fp32" or "fp32 (teacher-forced)". */
  baseline: string;
  teacher_forced: PplStudy['teacherForced'];
  windows: number;
  window: number;
  prefill: number;
  prefill_chunk: number | null;
}

export function pplJson(s: PplStudy): PplJson {
  const base = baselineOf(s);
  return {
    results: s.results.map((r) => ({ ...r, delta_nll: r.mean_nll - base.mean_nll, delta_ppl: r.ppl - base.ppl })),
    baseline: base.kv,
    teacher_forced: s.teacherForced,
    windows: s.windows,
    window: s.window,
    prefill: s.prefill,
    prefill_chunk: s.prefillChunk ?? null,
  };
}

function rows(s: PplStudy): (string | number)[][] {
  const j = pplJson(s);
  const out: (string | number)[][] = j.results.map((r) => [r.kv, r.mean_nll.toFixed(4), r.ppl.toFixed(2), signed(r.delta_nll, 4), signed(r.delta_ppl, 2)]);
  const tf = s.teacherForced;
  out.push([tf.kv, tf.mean_nll.toFixed(4), tf.ppl.toFixed(2), signed(tf.mean_nll - baselineOf(s).mean_nll, 4), signed(tf.ppl - baselineOf(s).ppl, 2)]);
  return out;
}

const HEADERS = ['kv cache', 'mean NLL', 'ppl', 'Δ NLL', 'Δ ppl'];

function caption(s: PplStudy): string {
  const tf = s.teacherForced;
  const chunks = (s.prefillChunk ?? null) === null ? '' : ` (in chunks of ${s.prefillChunk}, each continuing the cache)`;
  return (
    `${s.windows} window(s) of ${s.window} tokens, prefill ${s.prefill}${chunks}, ${s.window - 1 - s.prefill} decode predictions each; ` +
    `Δ vs ${baselineOf(s).kv}. Teacher-forced fp32 over all ${s.window - 1} predictions of each window: ` +
    `NLL ${tf.mean_nll_all.toFixed(4)}, ppl ${tf.ppl_all.toFixed(2)}.`
  );
}

export function pplMarkdown(s: PplStudy): string {
  return `${markdownTable(HEADERS, rows(s))}\n\n${caption(s)}\n`;
}

/** Aligned plain-text columns for the terminal. */
export function pplText(s: PplStudy): string {
  const all = [HEADERS, ...rows(s).map((r) => r.map(String))];
  const widths = HEADERS.map((_, i) => Math.max(...all.map((r) => r[i]!.length)));
  const lines = all.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  '));
  return `${lines.join('\n')}\n${caption(s)}\n`;
}
