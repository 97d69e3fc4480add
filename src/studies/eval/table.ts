/**
 * The paper's Table-1 analog: fp32, simulated quantization on every (key axis, value axis) at 2 and 4 bits,
 * KIVI at 2 and 4 bits, and KIVI-2's group size × residual ablation: the specs, each scored by streaming
 * perplexity on the same windows (eval/ppl.ts: one exact forward per window, shared by every spec).
 */
export type AxisCode = 'T' | 'C';

export interface FakeRow {
  kv: string;
  bits: 2 | 4;
  key: AxisCode;
  value: AxisCode;
}

export interface AblationCell {
  kv: string;
  groupSize: number;
  residual: number;
}

export const TABLE_BITS = [4, 2] as const;
export const ABLATION_G = [32, 64, 128];
export const ABLATION_R = [32, 64, 128];

export const FAKE_ROWS: FakeRow[] = TABLE_BITS.flatMap((bits) =>
  (['T', 'C'] as const).flatMap((key) => (['T', 'C'] as const).map((value) => ({ kv: `fake${bits}-k${key}-v${value}`, bits, key, value }))),
);

/** KIVI-2 spec name for (G, R): the defaults (G = 32, R = 128) are left out, so kivi2, kivi2-r32 and kivi2-g128 keep their golden names. */
export function kivi2Name(G: number, R: number): string {
  return `kivi2${G === 32 ? '' : `-g${G}`}${R === 128 ? '' : `-r${R}`}`;
}

/** The ablation's valid cells (R must be a multiple of G). */
export const ABLATION: AblationCell[] = ABLATION_G.flatMap((groupSize) =>
  ABLATION_R.filter((residual) => residual % groupSize === 0).map((residual) => ({ kv: kivi2Name(groupSize, residual), groupSize, residual })),
);

/** Every spec the table needs, each once. */
export const TABLE_SPECS: string[] = [...new Set(['fp32', ...FAKE_ROWS.map((r) => r.kv), 'kivi4', 'kivi2', ...ABLATION.map((c) => c.kv)])];
