/** Load a Hugging Face model directory: config.json, tokenizer, safetensors weights. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KiviError } from '../util/errors.js';
import { parseConfig, type ModelConfig } from './config.js';
import { loadWeights } from './weights.js';
import { LlamaModel } from './llama.js';
import { Tokenizer } from '../tokenizer/tokenizer.js';
import type { Kernels } from '../kernels/types.js';

export function readModelConfig(dir: string): ModelConfig {
  if (!fs.existsSync(dir)) throw new KiviError(`model directory ${dir} does not exist`);
  if (!fs.statSync(dir).isDirectory()) throw new KiviError(`${dir} is not a directory`);
  const file = path.join(dir, 'config.json');
  if (!fs.existsSync(file)) throw new KiviError(`${dir}: missing config.json`);
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    throw new KiviError(`${file}: malformed JSON`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new KiviError(`${file}: not a JSON object`);
  const cfg = parseConfig(raw as Record<string, unknown>);
  // generation_config.json may name more EOS tokens (Llama 3 instruct models do).
  const gen = path.join(dir, 'generation_config.json');
  if (fs.existsSync(gen)) {
    try {
      const g = JSON.parse(fs.readFileSync(gen, 'utf8')) as { eos_token_id?: number | number[] };
      const ids = typeof g.eos_token_id === 'number' ? [g.eos_token_id] : Array.isArray(g.eos_token_id) ? g.eos_token_id : [];
      for (const id of ids) if (!cfg.eosTokenIds.includes(id)) cfg.eosTokenIds.push(id);
    } catch {
      throw new KiviError(`${gen}: malformed JSON`);
    }
  }
  return cfg;
}

export interface LoadedModel {
  dir: string;
  config: ModelConfig;
  tokenizer: Tokenizer;
  model: LlamaModel;
}

export function loadModelDir(dir: string, kernels: Kernels): LoadedModel {
  const config = readModelConfig(dir);
  const tokenizer = Tokenizer.fromDir(dir, config);
  const weights = loadWeights(dir, config, kernels);
  return { dir, config, tokenizer, model: new LlamaModel(config, weights, kernels) };
}
