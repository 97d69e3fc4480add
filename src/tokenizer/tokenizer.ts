/**
 * Tokenizer: `tokenizer.json` + `tokenizer_config.json` through @huggingface/tokenizers, with BOS/EOS as
 * the model's configs say, and an incremental decoder for streaming text.
 */
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { type ByteSource, readJson } from '../io/source.js';
import { KiviError } from '../util/errors.js';

async function readObject(source: ByteSource, name: string, required: boolean): Promise<Record<string, unknown> | undefined> {
  const v = await readJson(source, name, { required });
  if (v === undefined) return undefined;
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new KiviError(`${source.locate(name)}: not a JSON object`);
  return v as Record<string, unknown>;
}

/** A special token as tokenizer_config.json gives it: a string or an AddedToken object. */
export function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return undefined;
}

/** The tokenizer models @huggingface/tokenizers implements. */
const MODEL_TYPES = ['BPE', 'Unigram', 'WordPiece'];

/**
 * Check the parts of tokenizer.json the library trusts blindly (it would fail later with messages such as
 * "x.split is not a function"): a known model type, a vocabulary, and BPE merges as "a b" strings or pairs.
 */
function checkTokenizerJson(tj: Record<string, unknown>): void {
  const model = tj.model as Record<string, unknown> | undefined;
  if (typeof model !== 'object' || model === null || Array.isArray(model)) throw new KiviError('tokenizer.json: "model" must be an object');
  const type = model.type;
  if (typeof type !== 'string' || !MODEL_TYPES.includes(type)) {
    throw new KiviError(
      `tokenizer.json: unsupported tokenizer model type ${type === undefined ? '(none given)' : JSON.stringify(type)} (supported: ${MODEL_TYPES.join(', ')})`,
    );
  }
  const vocab = model.vocab;
  const vocabOk =
    type === 'Unigram'
      ? Array.isArray(vocab) && vocab.every((e) => Array.isArray(e) && typeof e[0] === 'string' && typeof e[1] === 'number')
      : typeof vocab === 'object' && vocab !== null && !Array.isArray(vocab) && Object.values(vocab).every((id) => Number.isInteger(id) && (id as number) >= 0);
  if (!vocabOk) {
    throw new KiviError(`tokenizer.json: model.vocab must be ${type === 'Unigram' ? 'an array of [token, score] pairs' : 'an object of token → id'}`);
  }
  if (type === 'BPE') {
    const merges = model.merges;
    if (!Array.isArray(merges)) throw new KiviError('tokenizer.json: model.merges must be an array');
    const i = merges.findIndex((m) => !(typeof m === 'string' ? m.includes(' ') : Array.isArray(m) && m.length === 2 && m.every((x) => typeof x === 'string')));
    if (i >= 0)
      throw new KiviError(`tokenizer.json: model.merges[${i}] must be a string "a b" or a pair of strings, got ${JSON.stringify(merges[i])?.slice(0, 40)}`);
  }
}

/** What a tokenizer is built from: enough to build the same one again in another thread. */
export interface TokenizerSource {
  tokenizerJson: Record<string, unknown>;
  config: Record<string, unknown>;
  modelConfig: { bosTokenId: number | null; eosTokenIds: number[] };
}

export class Tokenizer {
  readonly bosId: number | null;
  readonly eosIds: number[];
  readonly addBos: boolean;
  readonly chatTemplate: string | undefined;
  readonly config: Record<string, unknown>;
  private readonly hf: HfTokenizer;

  readonly source: TokenizerSource;

  constructor(tokenizerJson: Record<string, unknown>, config: Record<string, unknown>, modelConfig: { bosTokenId: number | null; eosTokenIds: number[] }) {
    this.config = config;
    this.source = { tokenizerJson, config, modelConfig: { bosTokenId: modelConfig.bosTokenId, eosTokenIds: [...modelConfig.eosTokenIds] } };
    checkTokenizerJson(tokenizerJson);
    try {
      this.hf = new HfTokenizer(tokenizerJson as never, config as never);
    } catch (e) {
      throw new KiviError(`tokenizer.json could not be loaded: ${(e as Error).message}`);
    }
    const bosTok = tokenContent(config.bos_token);
    const eosTok = tokenContent(config.eos_token);
    this.bosId = modelConfig.bosTokenId ?? (bosTok !== undefined ? this.tokenToId(bosTok) : null);
    const eos = new Set(modelConfig.eosTokenIds);
    if (eosTok !== undefined) {
      const id = this.tokenToId(eosTok);
      if (id !== null) eos.add(id);
    }
    this.eosIds = [...eos];
    // Llama tokenizers add BOS unless told not to; tokenizers without a BOS token cannot.
    this.addBos = this.bosId !== null && config.add_bos_token !== false;
    this.chatTemplate = typeof config.chat_template === 'string' ? config.chat_template : undefined;
  }

  /** tokenizer.json (required) and tokenizer_config.json (optional) from a model's byte source. */
  static async load(source: ByteSource, modelConfig: { bosTokenId: number | null; eosTokenIds: number[] }): Promise<Tokenizer> {
    const tj = (await readObject(source, 'tokenizer.json', true))!;
    const tc = (await readObject(source, 'tokenizer_config.json', false)) ?? {};
    return new Tokenizer(tj, tc, modelConfig);
  }

  /**
   * A stand-in for models without a tokenizer (random-weight benchmarks): token i is the text "<ti>";
   * text prompts cannot be encoded meaningfully, token ids are used as given.
   */
  static synthetic(vocabSize: number, modelConfig: { bosTokenId: number | null; eosTokenIds: number[] }): Tokenizer {
    const vocab: Record<string, number> = {};
    for (let i = 0; i < vocabSize; i++) vocab[`<t${i}>`] = i;
    const tj = {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [],
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      model: {
        type: 'BPE',
        vocab,
        merges: [],
        unk_token: '<t0>',
        dropout: null,
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: false,
        byte_fallback: false,
      },
    };
    return new Tokenizer(tj, {}, modelConfig);
  }

  static fromSource(s: TokenizerSource): Tokenizer {
    return new Tokenizer(s.tokenizerJson, s.config, s.modelConfig);
  }

  tokenToId(token: string): number | null {
    return this.hf.token_to_id(token) ?? null;
  }

  /** Text → ids; a BOS is prepended when the tokenizer config asks for one (default) unless bos=false. */
  encode(text: string, opts: { bos?: boolean } = {}): number[] {
    const ids = this.hf.encode(text, { add_special_tokens: false }).ids as number[];
    const bos = opts.bos ?? this.addBos;
    return bos && this.bosId !== null ? [this.bosId, ...ids] : ids;
  }

  decode(ids: ArrayLike<number>, opts: { skipSpecial?: boolean } = {}): string {
    // The HF tokenizer throws on an empty list (e.g. a sequence cancelled before its first token).
    if (ids.length === 0) return '';
    return this.hf.decode(Array.from(ids), { skip_special_tokens: opts.skipSpecial ?? true });
  }

  isEos(id: number): boolean {
    return this.eosIds.includes(id);
  }
}

/**
 * Turns a growing list of ids into text deltas, in time independent of the text's length: each step decodes
 * a short window of the latest ids and emits what it adds beyond the window's first tokens. Those were
 * emitted already and stay as context, so that decoders which treat the start of a text specially (a
 * stripped leading space) or merge across tokens render the new tokens as the whole text would. Text ending
 * in U+FFFD (an incomplete UTF-8 sequence) is held back until a later token completes it. (Decoding the
 * whole list every step, as this did before, made a long generation quadratic.)
 */
export class StreamDecoder {
  /** The ids from the window's start on; window[0, read) are emitted already. */
  private window: number[] = [];
  private read = 0;
  constructor(private readonly tok: Tokenizer) {}

  push(id: number): string {
    this.window.push(id);
    return this.next(false);
  }

  /** Whatever is still held back. */
  flush(): string {
    return this.next(true);
  }

  private next(final: boolean): string {
    const seen = this.tok.decode(this.window.slice(0, this.read));
    const text = this.tok.decode(this.window);
    if (text.length <= seen.length || (!final && text.endsWith('\uFFFD'))) return '';
    // The next window starts at the tokens just emitted: they are its context.
    this.window.splice(0, this.read);
    this.read = this.window.length;
    return text.slice(seen.length);
  }
}
