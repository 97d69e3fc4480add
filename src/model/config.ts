/**
 * Model hyper-parameters from a Hugging Face `config.json` (Llama, Mistral, Qwen2 families).
 */
import { KiviError } from '../util/errors.js';

export const SUPPORTED_ARCHITECTURES = ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM'] as const;
export type Architecture = (typeof SUPPORTED_ARCHITECTURES)[number];

export type RopeScaling =
  | { type: 'none' }
  | { type: 'linear'; factor: number }
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositions: number };

export interface ModelConfig {
  architecture: Architecture;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling;
  /** Longest sequence (prompt + generated) the model supports. */
  maxPositions: number;
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry biases (Qwen2; Llama with attention_bias). */
  attentionBias: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

type Json = Record<string, unknown>;

function num(cfg: Json, key: string, opts: { required?: boolean; int?: boolean; positive?: boolean } = {}): number | undefined {
  const v = cfg[key];
  if (v === undefined || v === null) {
    if (opts.required) throw new KiviError(`config.json: missing "${key}"`);
    return undefined;
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new KiviError(`config.json: "${key}" must be a number`);
  if (opts.int && !Number.isInteger(v)) throw new KiviError(`config.json: "${key}" must be an integer`);
  if (opts.positive && v <= 0) throw new KiviError(`config.json: "${key}" must be positive`);
  return v;
}

function idList(v: unknown): number[] {
  if (typeof v === 'number') return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === 'number');
  return [];
}

function parseRopeScaling(raw: unknown): RopeScaling {
  if (raw === undefined || raw === null) return { type: 'none' };
  if (typeof raw !== 'object') throw new KiviError('config.json: "rope_scaling" must be an object');
  const r = raw as Json;
  const type = (r.rope_type ?? r.type) as string | undefined;
  if (type === undefined || type === 'default') return { type: 'none' };
  const factor = num(r, 'factor', { required: true, positive: true })!;
  if (type === 'linear') return { type: 'linear', factor };
  if (type === 'llama3') {
    return {
      type: 'llama3',
      factor,
      lowFreqFactor: num(r, 'low_freq_factor', { required: true, positive: true })!,
      highFreqFactor: num(r, 'high_freq_factor', { required: true, positive: true })!,
      originalMaxPositions: num(r, 'original_max_position_embeddings', { required: true, int: true, positive: true })!,
    };
  }
  throw new KiviError(`config.json: unsupported rope scaling type "${type}" (supported: linear, llama3)`);
}

/** Validate and normalize a parsed config.json. */
export function parseConfig(cfg: Json): ModelConfig {
  const archs = cfg.architectures;
  const arch = Array.isArray(archs) ? (archs[0] as string) : undefined;
  if (!arch || !(SUPPORTED_ARCHITECTURES as readonly string[]).includes(arch)) {
    throw new KiviError(`unsupported architecture ${arch ? `"${arch}"` : '(none given)'}; supported: ${SUPPORTED_ARCHITECTURES.join(', ')}`);
  }
  const act = cfg.hidden_act ?? 'silu';
  if (act !== 'silu') throw new KiviError(`config.json: unsupported hidden_act "${String(act)}" (only silu)`);
  const hiddenSize = num(cfg, 'hidden_size', { required: true, int: true, positive: true })!;
  const numHeads = num(cfg, 'num_attention_heads', { required: true, int: true, positive: true })!;
  const numKvHeads = num(cfg, 'num_key_value_heads', { int: true, positive: true }) ?? numHeads;
  if (numHeads % numKvHeads !== 0) {
    throw new KiviError(`config.json: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`);
  }
  const headDim = num(cfg, 'head_dim', { int: true, positive: true }) ?? hiddenSize / numHeads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) throw new KiviError(`config.json: head_dim ${headDim} must be an even integer`);
  // RoPE θ lives in rope_theta (older configs) or rope_parameters.rope_theta (transformers ≥ 5).
  const ropeParams = (cfg.rope_parameters ?? undefined) as Json | undefined;
  const ropeTheta = num(cfg, 'rope_theta', { positive: true }) ?? (ropeParams ? num(ropeParams, 'rope_theta', { positive: true }) : undefined) ?? 10000;
  const ropeScaling = parseRopeScaling(cfg.rope_scaling ?? ropeParams);
  let maxPositions = num(cfg, 'max_position_embeddings', { int: true, positive: true }) ?? 2048;
  // Full attention only: a sliding window (Mistral v0.1) bounds the context we can serve faithfully.
  const window = num(cfg, 'sliding_window', { int: true, positive: true });
  const useWindow = cfg.use_sliding_window !== false || arch === 'MistralForCausalLM';
  if (window !== undefined && useWindow && window < maxPositions) maxPositions = window;
  const eos = idList(cfg.eos_token_id);
  return {
    architecture: arch as Architecture,
    vocabSize: num(cfg, 'vocab_size', { required: true, int: true, positive: true })!,
    hiddenSize,
    intermediateSize: num(cfg, 'intermediate_size', { required: true, int: true, positive: true })!,
    numLayers: num(cfg, 'num_hidden_layers', { required: true, int: true, positive: true })!,
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: num(cfg, 'rms_norm_eps', { positive: true }) ?? 1e-6,
    ropeTheta,
    ropeScaling,
    maxPositions,
    tieWordEmbeddings: cfg.tie_word_embeddings === true,
    attentionBias: arch === 'Qwen2ForCausalLM' || cfg.attention_bias === true,
    bosTokenId: typeof cfg.bos_token_id === 'number' ? cfg.bos_token_id : null,
    eosTokenIds: eos,
  };
}
