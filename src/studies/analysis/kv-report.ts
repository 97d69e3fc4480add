/** `analyze kv` output: compact JSON and a Markdown summary with a reading generated from the numbers. */
import type { Bits } from '../../quant/quantizer.js';
import { markdownTable } from '../markdown.js';
import type { KvAnalysis } from './kv.js';
import type { Axis } from './kv-stats.js';

const round = (x: number) => Number(x.toPrecision(5));

/** The analysis with numbers rounded to 5 significant digits (the JSON stays small). */
export function kvJson(a: KvAnalysis, meta: Record<string, unknown>): unknown {
  return JSON.parse(JSON.stringify({ ...meta, ...a }, (_k, v) => (typeof v === 'number' && !Number.isInteger(v) ? round(v) : v)));
}

const f3 = (x: number) => x.toFixed(3);
const f2 = (x: number) => x.toFixed(2);

function errorOf(a: KvAnalysis, bits: Bits, axis: Axis) {
  return a.summary.errors.find((e) => e.bits === bits && e.axis === axis)!;
}

/** Errors within 2% of each other count as a tie. */
const tie = (a: number, b: number) => Math.abs(a - b) <= 0.02 * Math.max(a, b);

function than(a: number, b: number): string {
  if (tie(a, b)) return 'about the same as';
  return a < b ? 'lower than' : 'higher than';
}

/** "keys favour per-channel grouping (−47% error)" or "for values the two groupings tie (within 2%)". */
function preference(what: string, channel: number, token: number): string {
  if (tie(channel, token)) return `for ${what} the two groupings tie (within 2%)`;
  const [best, other, errBest, errOther] = channel < token ? ['channel', 'token', channel, token] : ['token', 'channel', token, channel];
  return `${what} favour per-${best} grouping (${Math.round((100 * (errOther - errBest)) / errOther)}% less error than per-${other})`;
}

/** One paragraph: what the numbers say about outliers and about which grouping suits K and V. */
export function kvReading(a: KvAnalysis): string {
  const s = a.summary;
  const bits = Math.min(...s.errors.map((e) => e.bits)) as Bits;
  const kT = errorOf(a, bits, 'token');
  const kC = errorOf(a, bits, 'channel');
  return [
    `Keys: the largest channel is on average ${f2(s.keyChannelSpread)}× the median channel, values ${f2(s.valueChannelSpread)}×;`,
    `${s.headsKeySpreadAbove} of ${s.heads} kv heads spread more in K than in V, and ${s.keyOutlierChannels} key channels`,
    `against ${s.valueOutlierChannels} value channels exceed ${a.outlierRatio}× their head's median.`,
    `Across tokens the spread is ${f2(s.keyTokenSpread)}× for keys and ${f2(s.valueTokenSpread)}× for values.`,
    `At ${bits} bits (G = ${a.groupSize}), per-channel grouping gives keys a relative error of ${f3(kC.k)}, ${than(kC.k, kT.k)} per-token's ${f3(kT.k)},`,
    `and the attention output ${f3(kC.attnK)} against ${f3(kT.attnK)};`,
    `per-token grouping gives values ${f3(kT.v)} against per-channel's ${f3(kC.v)}, and the attention output ${f3(kT.attnV)} against ${f3(kC.attnV)}.`,
    `So on this model, judged by the attention output, ${preference('keys', kC.attnK, kT.attnK)}, and ${preference('values', kC.attnV, kT.attnV)};`,
    'KIVI quantizes keys per channel and values per token.',
  ].join(' ');
}

export function kvMarkdown(a: KvAnalysis, meta: { model: string; text: string }, files: string[]): string {
  const spread = markdownTable(
    ['layer', 'kv head', 'K channel spread', 'K outlier channels', 'V channel spread', 'V outlier channels', 'K token spread', 'V token spread'],
    a.heads.map((h) => [
      h.layer,
      h.kvHead,
      f2(h.key.channelSpread),
      h.key.outlierChannels.join(', ') || '—',
      f2(h.value.channelSpread),
      h.value.outlierChannels.join(', ') || '—',
      f2(h.key.tokenSpread),
      f2(h.value.tokenSpread),
    ]),
  );
  const bitsList = [...new Set(a.summary.errors.map((e) => e.bits))];
  const errorTables = bitsList.map((bits) => {
    const idx = (axis: Axis) => a.heads[0]!.errors.findIndex((e) => e.bits === bits && e.axis === axis);
    const [t, c] = [idx('token'), idx('channel')];
    const rows = a.heads.map((h) => {
      const [et, ec] = [h.errors[t]!.error, h.errors[c]!.error];
      return [h.layer, h.kvHead, f3(et.k), f3(ec.k), f3(et.v), f3(ec.v), f3(et.attnK), f3(ec.attnK), f3(et.attnV), f3(ec.attnV)];
    });
    const [mt, mc] = [errorOf(a, bits, 'token'), errorOf(a, bits, 'channel')];
    rows.push(['mean', '', f3(mt.k), f3(mc.k), f3(mt.v), f3(mc.v), f3(mt.attnK), f3(mc.attnK), f3(mt.attnV), f3(mc.attnV)]);
    return (
      `### ${bits}-bit\n\n` +
      markdownTable(
        [
          'layer',
          'kv head',
          'K per-token',
          'K per-channel',
          'V per-token',
          'V per-channel',
          'attn (K quant.) per-token',
          'attn (K quant.) per-channel',
          'attn (V quant.) per-token',
          'attn (V quant.) per-channel',
        ],
        rows,
      )
    );
  });
  return `${[
    `# K/V cache analysis`,
    `Model \`${meta.model}\`, the first ${a.tokens} tokens of \`${meta.text}\` (BOS included); post-RoPE keys and values as cached, in float32.`,
    kvReading(a),
    `## Magnitude and outlier channels`,
    `Channel spread = largest / median per-channel magnitude (max |x| over tokens); token spread likewise over tokens. ` +
      `Outlier channels: magnitude above ${a.outlierRatio}× the median channel, largest first.`,
    spread,
    `## Quantization error by grouping axis (G = ${a.groupSize})`,
    `Relative Frobenius error of K and V quantize-dequantized as a whole (per-channel groups: ${a.groupSize} consecutive tokens from token 0), ` +
      `and of the causal attention output of each kv head's query heads (tokens 1..${a.tokens - 1}) with only K, or only V, quantized.`,
    ...errorTables,
    `## Plots`,
    files.map((f) => `- ${f}`).join('\n'),
  ].join('\n\n')}\n`;
}
