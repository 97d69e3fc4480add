/**
 * A diagnostic build of the attention kernel, for timing its parts on a GPU without a profiler
 * (scripts/gpu/attn-ablate.mjs; the backend's `attnVariant`, empty outside that script): `skip` leaves
 * parts out (`ti`: value addresses, `fold`: the query folded per key group, `keys`: KIVI key rows
 * scored, `fkeys`: full-precision key rows scored, `max`: the tile maximum's tree, `values`: the value
 * phase; in the KIVI value loop `vscale`: scale and minimum loads, `vcodes`: code loads, `unpack`: codes
 * read as floats), and then results are wrong;
 * `unroll` (value tokens a lane loads before their arithmetic) and `ch` (value channels a thread owns)
 * override the defaults, `na` builds the kernel for at least that many arena bindings (the unused ones
 * bound to dummies), and results stay right.
 */
export interface AttnVariant {
  skip: ReadonlySet<string>;
  /** Loads from several arenas by selects instead of a switch. */
  sel: boolean;
  unroll: number;
  ch: number;
  /** Arena bindings the kernel is built for, at least (0: the pool's slots in use). */
  na: number;
  /** KIVI code widths the kernel has paths for (empty: 2, 4 and 8); other widths are not computed. */
  bits: readonly number[];
  /**
   * The value accumulators wait in workgroup memory between tiles (loaded and rescaled at each value
   * phase, stored after it), so that they are not live through the key phase. Measured on an H200 the
   * driver then gave the kernel more registers, not fewer (218 against 168 at 4:1), and it ran 1.5–2.1× as
   * slow (docs/perf/webgpu-h200.md); kept to time again on other GPUs.
   */
  wacc: boolean;
  /**
   * Each thread loads its token's 2- or 4-bit key row, value row and value scales into workgroup memory
   * while it resolves the token's addresses (all of a tile's loads in flight at once, one wait), and the
   * key and value phases read them from there instead of from the pages. Measured on an H200: 248
   * registers against 168 at 4:1 (210 against 128 at MHA), 1.9–3.4× as slow (docs/perf/webgpu-h200.md).
   */
  stage: boolean;
  /**
   * Float16 key row pieces (8 channels each) loaded before their arithmetic (0: 4, or 2 where D/8 is not
   * a multiple of 4). On an H200, 1 and 2 were no faster than 4.
   */
  ku: number;
  /**
   * Partial sums a query head of a KIVI key row's score (1: one chain of multiply-adds, the default). On
   * an H200, 2 and 4 kept the registers and the time.
   */
  kp: number;
}

export const ATTN_PARTS = ['ti', 'fold', 'keys', 'fkeys', 'max', 'values', 'vscale', 'vcodes', 'unpack'] as const;

/** A variant from its text: a comma list of ATTN_PARTS, `uN`, `chN`, `naN`, `bN`, `kuN`, `kpN`, `sel`, `wacc` and `stage` (e.g. "u2,ch8"). */
export function parseAttnVariant(text: string): AttnVariant {
  const skip = new Set<string>();
  let unroll = 0,
    ch = 0,
    na = 0,
    sel = false,
    wacc = false,
    stage = false,
    ku = 0,
    kp = 0;
  const bits: number[] = [];
  for (const w of text.split(',').filter(Boolean)) {
    if ((ATTN_PARTS as readonly string[]).includes(w)) skip.add(w);
    else if (w === 'sel') sel = true;
    else if (w === 'wacc') wacc = true;
    else if (w === 'stage') stage = true;
    else if (/^ku(1|2|4)$/.test(w)) ku = Number(w.slice(2));
    else if (/^kp(1|2|4)$/.test(w)) kp = Number(w.slice(2));
    else if (/^u[1-8]$/.test(w)) unroll = Number(w.slice(1));
    else if (/^ch(4|8|16)$/.test(w)) ch = Number(w.slice(2));
    else if (/^na([1-9]|1[0-6])$/.test(w)) na = Number(w.slice(2));
    else if (/^b(2|4|8)$/.test(w)) bits.push(Number(w.slice(1)));
    else throw new Error(`attention variant "${text}": unknown part "${w}"`);
  }
  return { skip, unroll, ch, sel, na, bits, wacc, stage, ku, kp };
}

/** The kernel on `main`: nothing left out, the default unroll and channels. */
export const DEFAULT_VARIANT: AttnVariant = { skip: new Set(), unroll: 0, ch: 0, sel: false, na: 0, bits: [], wacc: false, stage: false, ku: 0, kp: 0 };
