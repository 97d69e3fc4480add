/**
 * Rotary position embedding, Hugging Face "rotate half" convention: a head vector's first and second
 * halves are rotated as pairs (x_i, x_{i+d/2}) by angle pos·inv_freq_i. Frequencies are computed in float32
 * as transformers does, with the linear and llama3 scalings.
 */
import type { ModelConfig } from './config.js';

const fr = Math.fround;

export function ropeInvFreq(cfg: Pick<ModelConfig, 'headDim' | 'ropeTheta' | 'ropeScaling'>): Float32Array {
  const d = cfg.headDim;
  const half = d / 2;
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) inv[i] = fr(1 / fr(cfg.ropeTheta ** fr((2 * i) / d)));
  const s = cfg.ropeScaling;
  if (s.type === 'linear') {
    for (let i = 0; i < half; i++) inv[i] = fr(inv[i]! / s.factor);
  } else if (s.type === 'llama3') {
    const lowWavelen = s.originalMaxPositions / s.lowFreqFactor;
    const highWavelen = s.originalMaxPositions / s.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const f = inv[i]!;
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < highWavelen) continue; // high frequency: unchanged
      if (wavelen > lowWavelen) {
        inv[i] = fr(f / s.factor); // low frequency: scaled
        continue;
      }
      const smooth = (s.originalMaxPositions / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
      inv[i] = fr((1 - smooth) * (f / s.factor) + smooth * f);
    }
  }
  return inv;
}

/** cos/sin tables by position, grown on demand so long-context models do not pay up front. */
export class RopeTable {
  private cos = new Float32Array(0);
  private sin = new Float32Array(0);
  private positions = 0;
  private readonly half: number;

  /** @param maxPositions the model's context: the tables never grow past it (at 4M positions doubling would cost GiBs). */
  constructor(
    private readonly invFreq: Float32Array,
    private readonly maxPositions = Number.POSITIVE_INFINITY,
  ) {
    this.half = invFreq.length;
  }

  private ensure(pos: number): void {
    if (pos < this.positions) return;
    const n = Math.max(pos + 1, Math.min(this.maxPositions, Math.max(this.positions * 2, 256)));
    const cos = new Float32Array(n * this.half);
    const sin = new Float32Array(n * this.half);
    cos.set(this.cos);
    sin.set(this.sin);
    for (let p = this.positions; p < n; p++) {
      for (let i = 0; i < this.half; i++) {
        const a = fr(p * this.invFreq[i]!);
        cos[p * this.half + i] = Math.cos(a);
        sin[p * this.half + i] = Math.sin(a);
      }
    }
    this.cos = cos;
    this.sin = sin;
    this.positions = n;
  }

  /** Room for positions [0, n) (grown by doubling, never past the model's context): the positions held. */
  reserve(n: number): number {
    this.ensure(n - 1);
    return this.positions;
  }

  /** cos and sin of positions [0, n) × frequencies, [n][d/2] each. */
  tables(n: number): { cos: Float32Array; sin: Float32Array } {
    this.ensure(n - 1);
    return { cos: this.cos.subarray(0, n * this.half), sin: this.sin.subarray(0, n * this.half) };
  }

  /** Rotate `heads` consecutive head vectors of size 2·half at x[off..] for position pos, in place. */
  apply(x: Float32Array, off: number, heads: number, pos: number): void {
    this.ensure(pos);
    const half = this.half;
    const d = 2 * half;
    const co = pos * half;
    for (let h = 0; h < heads; h++) {
      const b = off + h * d;
      for (let i = 0; i < half; i++) {
        const c = this.cos[co + i]!;
        const s = this.sin[co + i]!;
        const x1 = x[b + i]!;
        const x2 = x[b + i + half]!;
        x[b + i] = x1 * c - x2 * s;
        x[b + i + half] = x2 * c + x1 * s;
      }
    }
  }
}
