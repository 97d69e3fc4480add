/**
 * The one description of cache and attention work that every back end reads (docs/ARCHITECTURE.md).
 *
 * A step plan (plan.ts) is three int32 tables: tasks, segments and jobs. The TypeScript reference
 * reads them as typed arrays, the WebAssembly kernels read the same words from linear memory (the
 * AssemblyScript sources import this file), and the WebGPU back end reads them from a storage buffer
 * (its WGSL gets these constants generated from this module). Plain integer constants only: this file
 * must compile as AssemblyScript too.
 *
 * Records describe one sequence for every layer and kv head at once: a page holds all layers and heads
 * of its tokens, and a back end maps (page, layer, kv head) to memory. Rows refer to the step's qkv
 * activation ([rows][(H + 2·KV)·d], q then k then v) and attention output ([rows][H·d]).
 */

// ---- Segments: a run of tokens, in a page or in the step's activation rows ------------------------

/** n rows of the qkv activation from row SEG_PAGE: keys or values of new tokens, float32. */
export const SEG_ROWS = 0;
/** Full-precision page, float32 [cap][d] per (layer, kv head). */
export const SEG_F32 = 1;
/** Full-precision page, float16 bits [cap][d] per (layer, kv head). */
export const SEG_F16 = 2;
/**
 * KIVI key block: cap tokens quantized per channel in groups of G tokens. Per (layer, kv head): codes
 * [cap][d·b/32] u32 (a token's channels packed along the channel axis), then float16 scales [cap/G][d],
 * then float16 minimums [cap/G][d].
 */
export const SEG_KIVI_K = 3;
/**
 * KIVI value page: tokens quantized per token in groups of G channels. Per (layer, kv head): codes
 * [cap][d·b/32] u32, then float16 scales [cap][d/G], then float16 minimums [cap][d/G].
 */
export const SEG_KIVI_V = 4;
/**
 * KIVI value page with 8-bit metadata (`vmeta=8`; the TypeScript reference only). Per (layer, kv head):
 * codes [cap][d·b/32] u32, then float16 (lo, hi) [cap][2] (each token's range), then bytes (u, v)
 * [cap][d/G][2]: group g of token t has minimum lo + u·Δ and scale (v − u)·Δ / (2^b − 1), Δ = (hi − lo) / 255,
 * decoded in float32 (src/quant/meta8.ts).
 */
export const SEG_KIVI_V8 = 5;

/** Segment kind. */
export const SEG_KIND = 0;
/**
 * Flag OR'ed into SEG_KIND: a run of a page list (StepPlan.keyRun/valueRun: SEG_PAGE indexes
 * StepPlan.lists, SEG_T0 is the first token within the list's pages). Only back ends that set
 * Backend.pageRuns ever see it.
 */
export const SEG_RUN = 1 << 16;
/** Tokens in the segment. */
export const SEG_N = 1;
/** The back end's handle of the page (SEG_ROWS: the first activation row). */
export const SEG_PAGE = 2;
/** First token slot within the page (0 for SEG_ROWS). */
export const SEG_T0 = 3;
/** Token slots of the page (its capacity; fixes the page's layout). */
export const SEG_CAP = 4;
/** Code bits of KIVI pages (2, 4 or 8); 0 otherwise. */
export const SEG_BITS = 5;
/** Group size G of KIVI pages (and of fake-quantization jobs); 0 otherwise. */
export const SEG_G = 6;
/**
 * Bytes of one (layer, kv head) section of the page (kernels/pages.ts computes it; 0 for SEG_ROWS). KIVI
 * sections hold their codes at 0, their scales at cap·(d·b/32)·4 bytes and their minimums right after the
 * scales: (cap/G)·d float16 for keys, cap·(d/G) for values.
 */
export const SEG_SECTION = 7;
export const SEG_WORDS = 8;

// ---- Attention tasks: one query row of one sequence, all its heads ---------------------------------

/** Row of the qkv activation holding the queries (and of the output holding the result). */
export const TASK_ROW = 0;
/** First key segment and count, in token order. */
export const TASK_K0 = 1;
export const TASK_KN = 2;
/** First value segment and count, in token order (same tokens as the keys). */
export const TASK_V0 = 3;
export const TASK_VN = 4;
/** Tokens attended. */
export const TASK_TOKENS = 5;
export const TASK_WORDS = 8;

// ---- Cache jobs: data moved or quantized into pages ------------------------------------------------

/** Copy (and round, for float16 pages) the source tokens into the destination's slots. */
export const JOB_STORE = 0;
/** Quantize cap tokens of keys per channel into one KIVI key block (the destination). */
export const JOB_QKEY = 1;
/** Quantize the source tokens' values per token into the destination value page's slots. */
export const JOB_QVAL = 2;
/** Write the quantize-dequantize of each source token (groups of G channels) into float32 slots. */
export const JOB_FAKE_TOKEN = 3;
/** Write the quantize-dequantize of one group of ≤ G tokens, per channel, into float32 slots. */
export const JOB_FAKE_CHANNEL = 4;

/**
 * Pre phase (`rot=hadamard`, every back end): rotate the query heads and the key heads of
 * the destination's SEG_ROWS rows in place by the orthonormal Walsh–Hadamard transform (src/quant/hadamard.ts),
 * so attention and the cache see rotated keys and queries and q·k is unchanged. No sources.
 */
export const JOB_ROTATE = 5;

/** Job kind. */
export const JOB_KIND = 0;
/** Which half of the cache: JOB_KEYS or JOB_VALUES (and which part of SEG_ROWS sources). */
export const JOB_HALF = 1;
/** Source segments (their tokens, in order, make the input). */
export const JOB_SRC0 = 2;
export const JOB_SRCN = 3;
/** The destination segment (its kind, page, first slot and count say where and how). */
export const JOB_DST = 4;
/** Code bits of fake-quantization jobs (the destination of a fake job is a float32 page). */
export const JOB_BITS = 5;
export const JOB_WORDS = 8;

export const JOB_KEYS = 0;
export const JOB_VALUES = 1;
