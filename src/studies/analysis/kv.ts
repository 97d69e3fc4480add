/**
 * `analyze kv`: the paper's observations (docs/KIVI.md §2) measured on a model's real K/V — magnitude per
 * channel and per token, outlier channels, and the error of per-token vs per-channel grouping — for every
 * layer and kv head.
 */
import type { LlamaModel } from '../../model/llama.js';
import type { Bits } from '../../quant/quantizer.js';
import { KiviError } from '../../util/errors.js';
import { mean } from '../numbers.js';
import { type CapturedKv, captureKv } from './capture.js';
import { type Axis, type HeadErrors, type MagnitudeStats, magnitudeStats, quantErrors } from './kv-stats.js';

export interface KvAnalysisOptions {
  /** Quantization group size (KIVI's G). */
  groupSize: number;
  /** A channel is an outlier above this multiple of the median channel magnitude. */
  outlierRatio: number;
  bits: Bits[];
  onProgress?: (done: number, total: number) => void;
}

export interface HeadAnalysis {
  layer: number;
  kvHead: number;
  key: MagnitudeStats;
  value: MagnitudeStats;
  errors: HeadErrors[];
}

export interface KvSummary {
  /** Means over all (layer, kv head). */
  keyChannelSpread: number;
  valueChannelSpread: number;
  keyTokenSpread: number;
  valueTokenSpread: number;
  keyOutlierChannels: number;
  valueOutlierChannels: number;
  /** Heads whose key channel spread exceeds their value channel spread. */
  headsKeySpreadAbove: number;
  heads: number;
  /** Mean relative errors per bits and axis. */
  errors: { bits: Bits; axis: Axis; k: number; v: number; attnK: number; attnV: number }[];
}

export interface KvAnalysis {
  tokens: number;
  groupSize: number;
  outlierRatio: number;
  heads: HeadAnalysis[];
  summary: KvSummary;
}

export const AXES: Axis[] = ['token', 'channel'];

export function checkTokens(n: number, context: number): void {
  if (!Number.isInteger(n) || n < 2) throw new KiviError(`--tokens must be an integer ≥ 2, got ${n}`);
  if (n > context) throw new KiviError(`--tokens ${n} is longer than the model's context of ${context}`);
}

export async function analyzeKv(model: LlamaModel, ids: number[], o: KvAnalysisOptions): Promise<{ analysis: KvAnalysis; captured: CapturedKv }> {
  checkTokens(ids.length, model.config.maxPositions);
  const captured = await captureKv(model, ids);
  const { numKvHeads: KV, headDim: d } = model.dims;
  const T = ids.length;
  const configs = o.bits.flatMap((bits) => AXES.map((axis) => ({ bits, axis })));
  const heads: HeadAnalysis[] = [];
  const total = captured.layers.length * KV;
  captured.layers.forEach((layer, l) => {
    for (let h = 0; h < KV; h++) {
      heads.push({
        layer: l,
        kvHead: h,
        key: magnitudeStats(layer.k.subarray(h * T * d, (h + 1) * T * d), T, d, o.outlierRatio),
        value: magnitudeStats(layer.v.subarray(h * T * d, (h + 1) * T * d), T, d, o.outlierRatio),
        errors: quantErrors(layer, model.dims, T, h, o.groupSize, configs),
      });
      o.onProgress?.(heads.length, total);
    }
  });
  return { analysis: { tokens: T, groupSize: o.groupSize, outlierRatio: o.outlierRatio, heads, summary: summarize(heads, configs) }, captured };
}

function summarize(heads: HeadAnalysis[], configs: { bits: Bits; axis: Axis }[]): KvSummary {
  const avg = (f: (h: HeadAnalysis) => number) => mean(heads.map(f));
  return {
    keyChannelSpread: avg((h) => h.key.channelSpread),
    valueChannelSpread: avg((h) => h.value.channelSpread),
    keyTokenSpread: avg((h) => h.key.tokenSpread),
    valueTokenSpread: avg((h) => h.value.tokenSpread),
    keyOutlierChannels: heads.reduce((a, h) => a + h.key.outlierChannels.length, 0),
    valueOutlierChannels: heads.reduce((a, h) => a + h.value.outlierChannels.length, 0),
    headsKeySpreadAbove: heads.filter((h) => h.key.channelSpread > h.value.channelSpread).length,
    heads: heads.length,
    errors: configs.map(({ bits, axis }, i) => ({
      bits,
      axis,
      k: avg((h) => h.errors[i]!.error.k),
      v: avg((h) => h.errors[i]!.error.v),
      attnK: avg((h) => h.errors[i]!.error.attnK),
      attnV: avg((h) => h.errors[i]!.error.attnV),
    })),
  };
}
