/** `eval kld` output: the JSON line and aligned text. */

import { keyGroup, valueGroup, valueMeta8 } from '../../cache/kivi.js';
import { KIVI2_HQ, parseKvSpec } from '../../cache/spec.js';
import type { TopLevelSpec } from '../plot.js';
import type { KldStudy } from './kld.js';

export interface KldJson {
  results: { kv: string; kld: number; top1_agree: number; mean_nll: number; ppl: number; bits_per_element: number }[];
}

export function kldJson(s: KldStudy): KldJson {
  return {
    results: s.results.map((r) => ({
      kv: r.kv,
      kld: r.kld,
      top1_agree: r.top1_agree,
      mean_nll: r.mean_nll,
      ppl: r.ppl,
      bits_per_element: r.bits_per_element,
    })),
  };
}

const HEADERS = ['kv cache', 'bits/elem', 'KLD (nats)', 'top-1 agree', 'mean NLL', 'ppl'];

export function kldText(s: KldStudy): string {
  const rows = s.results.map((r) => [r.kv, r.bits_per_element.toFixed(3), r.kld.toFixed(5), r.top1_agree.toFixed(4), r.mean_nll.toFixed(4), r.ppl.toFixed(2)]);
  const all = [HEADERS, ...rows];
  const widths = HEADERS.map((_, i) => Math.max(...all.map((r) => r[i]!.length)));
  const lines = all.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  '));
  return (
    `${lines.join('\n')}\n${s.windows} window(s) of ${s.window} tokens, prefill ${s.prefill}, ` +
    `${s.window - 1 - s.prefill} decode steps each; KL(p_fp32 ‖ p_spec) and top-1 agreement against an fp32 cache run in lockstep.\n`
  );
}

/** Points on the frontier: no other point has fewer (or equal) bits and a lower KLD. */
export function frontier<T extends { bits_per_element: number; kld: number }>(points: T[]): T[] {
  return points.filter((p) => !points.some((o) => o !== p && o.bits_per_element <= p.bits_per_element && o.kld < p.kld));
}

/** A short name for a chart: `kivi:k=4,v=2,g=64,rot=hadamard` → `k4 v2 g64 rot`; named specs as they are. */
export function shortLabel(kv: string): string {
  if (kv === 'kivi2-hq') return `kivi2-hq (${shortLabel(KIVI2_HQ)})`;
  if (!kv.startsWith('kivi:')) return kv;
  const spec = parseKvSpec(kv);
  if (spec.kind !== 'kivi') return kv;
  const Gk = keyGroup(spec);
  const Gv = valueGroup(spec);
  const parts = [`k${spec.kBits}`, `v${spec.vBits}`];
  if (Gk === Gv && Gk !== 32) parts.push(`g${Gk}`);
  if (Gk !== Gv) parts.push(`gk${Gk}`, `gv${Gv}`);
  if (spec.residual !== 128) parts.push(`r${spec.residual}`);
  if (spec.residualDtype === 'fp32') parts.push('res32');
  if (spec.keyRotation === 'hadamard') parts.push('rot');
  if (spec.sink) parts.push(`sink${spec.sink}`);
  if (valueMeta8(spec)) parts.push('vmeta8');
  return parts.join(' ');
}

/**
 * KLD against bits per element, both log-scaled, for the specs of at most `maxBits` (fp32 itself, at KLD 0,
 * cannot be shown), each a coloured point named in the legend, the frontier joined by a line.
 */
export function kldFrontierChart(results: { kv: string; kld: number; bits_per_element: number }[], subtitle: string, maxBits = 8): TopLevelSpec {
  const pts = results
    .filter((r) => r.kld > 0 && r.bits_per_element <= maxBits)
    .map((r) => ({ label: shortLabel(r.kv), bits_per_element: r.bits_per_element, kld: r.kld }));
  const front = frontier(pts).sort((a, b) => a.bits_per_element - b.bits_per_element);
  const x = {
    field: 'bits_per_element',
    type: 'quantitative',
    title: 'bits per cached element (codes + metadata)',
    scale: { type: 'log', base: 2, nice: false, padding: 20 },
  } as const;
  const y = { field: 'kld', type: 'quantitative', title: 'KL(p_fp32 ‖ p_cache), nats per decode step', scale: { type: 'log' } } as const;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'KV-cache quality against size: KL divergence from fp32', subtitle },
    width: 460,
    height: 340,
    layer: [
      { data: { values: front }, mark: { type: 'line', color: '#999', strokeDash: [4, 3] }, encoding: { x, y } },
      {
        data: { values: pts },
        mark: { type: 'point', filled: true, size: 90, opacity: 0.9 },
        encoding: {
          x,
          y,
          color: { field: 'label', type: 'nominal', title: 'cache', scale: { scheme: 'tableau20' }, sort: null, legend: { labelLimit: 400 } },
          shape: { field: 'label', type: 'nominal', title: 'cache', sort: null },
        },
      },
    ],
  } as TopLevelSpec;
}

/** The chart of one `eval kld` run. */
export function kldStudyChart(s: KldStudy): TopLevelSpec {
  return kldFrontierChart(
    s.results,
    `${s.windows} window(s) of ${s.window} tokens, prefill ${s.prefill}; the dashed line joins the frontier (lowest KLD at ≤ those bits)`,
  );
}
