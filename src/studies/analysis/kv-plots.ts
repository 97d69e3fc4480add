/** Charts of `analyze kv` (Vega-Lite specs; studies/plot.ts renders them). */
import type { TopLevelSpec } from '../plot.js';
import type { CapturedKv } from './capture.js';
import type { KvAnalysis } from './kv.js';

const SCHEMA = 'https://vega.github.io/schema/vega-lite/v6.json';
const TENSOR = { k: 'Key cache', v: 'Value cache' } as const;

/** Rows {head, token (bin start), channel, magnitude}: max |x| over each bin of `bin` tokens. */
function binnedMagnitude(
  x: Float32Array,
  kvHeads: number,
  T: number,
  d: number,
  bin: number,
): { head: number; token: number; channel: number; magnitude: number }[] {
  const rows: { head: number; token: number; channel: number; magnitude: number }[] = [];
  for (let h = 0; h < kvHeads; h++) {
    for (let t0 = 0; t0 < T; t0 += bin) {
      for (let c = 0; c < d; c++) {
        let m = 0;
        for (let t = t0; t < Math.min(T, t0 + bin); t++) m = Math.max(m, Math.abs(x[(h * T + t) * d + c]!));
        rows.push({ head: h, token: t0, channel: c, magnitude: Number(m.toPrecision(4)) });
      }
    }
  }
  return rows;
}

/**
 * The paper's Figure 2 as heat-maps: |K| and |V| of one layer over (token, channel), one row per kv head.
 * Tokens are grouped in bins (max |x| per bin) so the SVG stays small; outlier key channels show as bright
 * vertical stripes that run through every token.
 */
export function magnitudeHeatmap(cap: CapturedKv, layer: number, maxBins = 32): TopLevelSpec {
  const { numKvHeads: KV, headDim: d } = cap.dims;
  const T = cap.tokens;
  const bin = Math.ceil(T / maxBins);
  const panel = (which: 'k' | 'v') => ({
    title: TENSOR[which],
    data: { values: binnedMagnitude(cap.layers[layer]![which], KV, T, d, bin) },
    facet: { row: { field: 'head', type: 'ordinal' as const, title: 'kv head' } },
    spec: {
      // Whole pixels per cell: no seams between cells, short SVG paths.
      width: 3 * d,
      height: 5 * Math.ceil(T / bin),
      mark: 'rect' as const,
      encoding: {
        x: { field: 'channel', type: 'ordinal' as const, title: 'channel', axis: { values: [0, 32, 64, 96], labelAngle: 0 } },
        y: { field: 'token', type: 'ordinal' as const, title: `token (bins of ${bin})`, axis: { values: binTicks(T, bin) } },
        color: { field: 'magnitude', type: 'quantitative' as const, title: `|${which.toUpperCase()}|`, scale: { scheme: 'viridis', zero: true } },
      },
    },
  });
  return {
    $schema: SCHEMA,
    title: { text: `Layer ${layer}: magnitude of the key and value caches`, subtitle: `${T} tokens; max |x| per bin of ${bin} tokens` },
    hconcat: [panel('k'), panel('v')],
    resolve: { scale: { color: 'independent' } },
    // Thousands of cells: no per-cell ARIA labels, which would triple the SVG.
    config: { view: { stroke: null }, aria: false },
  } as TopLevelSpec;
}

function binTicks(T: number, bin: number): number[] {
  const step = bin * Math.max(1, Math.round(T / bin / 4));
  const out: number[] = [];
  for (let t = 0; t < T; t += step) out.push(t);
  return out;
}

/** Max |x| per channel for every layer and kv head, keys against values. */
export function channelMagnitudeChart(a: KvAnalysis): TopLevelSpec {
  const values = a.heads.flatMap((h) =>
    (['k', 'v'] as const).flatMap((w) =>
      (w === 'k' ? h.key : h.value).channelMagnitude.map((m, c) => ({
        layer: h.layer,
        head: h.kvHead,
        tensor: TENSOR[w],
        channel: c,
        magnitude: Number(m.toPrecision(4)),
      })),
    ),
  );
  return {
    $schema: SCHEMA,
    title: { text: 'Per-channel magnitude (max |x| over tokens)', subtitle: `${a.tokens} tokens; rows: layer, columns: kv head` },
    data: { values },
    facet: {
      row: { field: 'layer', type: 'ordinal', title: 'layer' },
      column: { field: 'head', type: 'ordinal', title: 'kv head' },
    },
    spec: {
      width: 260,
      height: 70,
      mark: { type: 'line', strokeWidth: 1 },
      encoding: {
        x: { field: 'channel', type: 'quantitative', title: 'channel', scale: { domain: [0, a.heads[0]!.key.channelMagnitude.length - 1] } },
        y: { field: 'magnitude', type: 'quantitative', title: 'max |x|' },
        color: { field: 'tensor', type: 'nominal', title: null, scale: { range: ['#d62728', '#1f77b4'] } },
      },
    },
    resolve: { scale: { y: 'independent' } },
  } as TopLevelSpec;
}

/** Channel spread (max / median channel magnitude) per layer: keys against values, one point per kv head. */
export function spreadChart(a: KvAnalysis): TopLevelSpec {
  const values = a.heads.flatMap((h) => [
    { layer: h.layer, head: h.kvHead, tensor: 'Key', spread: h.key.channelSpread },
    { layer: h.layer, head: h.kvHead, tensor: 'Value', spread: h.value.channelSpread },
  ]);
  return {
    $schema: SCHEMA,
    title: { text: 'Outlier channels: largest / median channel magnitude', subtitle: `one point per kv head; dashed: outlier threshold ${a.outlierRatio}×` },
    width: 360,
    height: 200,
    layer: [
      {
        data: { values },
        mark: { type: 'point', filled: true, size: 60 },
        encoding: {
          x: { field: 'layer', type: 'ordinal', title: 'layer', axis: { labelAngle: 0 } },
          y: { field: 'spread', type: 'quantitative', title: 'max / median channel magnitude', scale: { zero: false } },
          color: { field: 'tensor', type: 'nominal', title: null, scale: { range: ['#d62728', '#1f77b4'] } },
          shape: { field: 'head', type: 'nominal', title: 'kv head' },
        },
      },
      {
        data: { values: [{ y: a.outlierRatio }] },
        mark: { type: 'rule', strokeDash: [4, 4], color: 'gray' },
        encoding: { y: { field: 'y', type: 'quantitative' } },
      },
    ],
  } as TopLevelSpec;
}

const QUANTITY = {
  k: 'K',
  v: 'V',
  attnK: 'attention output, K quantized',
  attnV: 'attention output, V quantized',
} as const;

/** Relative error of per-token vs per-channel grouping, per layer (mean over kv heads). */
export function quantErrorChart(a: KvAnalysis): TopLevelSpec {
  const values: Record<string, string | number>[] = [];
  const layers = [...new Set(a.heads.map((h) => h.layer))];
  const configs = a.heads[0]!.errors.map((e) => ({ bits: e.bits, axis: e.axis }));
  for (const layer of layers) {
    const hs = a.heads.filter((h) => h.layer === layer);
    configs.forEach((c, i) => {
      for (const q of Object.keys(QUANTITY) as (keyof typeof QUANTITY)[]) {
        const err = hs.reduce((s, h) => s + h.errors[i]!.error[q], 0) / hs.length;
        values.push({ layer, bits: `${c.bits}-bit`, grouping: `per-${c.axis}`, quantity: QUANTITY[q], error: err });
      }
    });
  }
  return {
    $schema: SCHEMA,
    title: { text: 'Quantization error by grouping axis', subtitle: `relative Frobenius error, mean over kv heads; G = ${a.groupSize}, ${a.tokens} tokens` },
    data: { values },
    facet: {
      row: { field: 'bits', type: 'ordinal', title: null },
      column: { field: 'quantity', type: 'nominal', title: null, sort: Object.values(QUANTITY) },
    },
    spec: {
      width: 180,
      height: 120,
      mark: 'bar',
      encoding: {
        x: { field: 'layer', type: 'ordinal', title: 'layer', axis: { labelAngle: 0 } },
        xOffset: { field: 'grouping', type: 'nominal' },
        y: { field: 'error', type: 'quantitative', title: 'relative error' },
        color: { field: 'grouping', type: 'nominal', title: 'grouping', scale: { range: ['#ff7f0e', '#2ca02c'] } },
      },
    },
    resolve: { scale: { y: 'independent' } },
  } as TopLevelSpec;
}
