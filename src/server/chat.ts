/**
 * Chat messages → prompt tokens. A model that ships a chat template (tokenizer_config.json `chat_template`,
 * or a `chat_template.jinja` file) is rendered with a real Jinja implementation, exactly as Hugging Face
 * `apply_chat_template(add_generation_prompt=True)` does: the template writes any BOS itself, so the text
 * is encoded without adding one.
 *
 * A model without a template (the bundled one is a base model) gets a plain-text transcript:
 *
 *     System: You are terse.
 *     User: Hi
 *     Assistant: Hello.
 *     User: Name a color.
 *     Assistant:
 *
 * one line per message (`System` for system and developer messages, then `User`, `Assistant`, `Tool`),
 * ending with `Assistant:`; it is encoded with the tokenizer's usual BOS, and generation also stops at
 * "\nUser:" so the model does not write the user's next turn.
 *
 * Rendering and tokenizing run in a child process (prompt-worker.ts): a template is untrusted code, and a
 * megabyte of text takes a second to tokenize, neither of which may stall the streams being served.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Template } from '@huggingface/jinja';
import { type Tokenizer, tokenContent } from '../tokenizer/tokenizer.js';
import { KiviError } from '../util/errors.js';
import { PromptWorker, type PromptWorkerOptions } from './prompt-worker.js';

export interface ChatMessage {
  role: string;
  content: string;
  name?: string;
}

export interface ChatPrompt {
  ids: number[];
  /** Stop strings the format needs (added to the request's own). */
  stop: string[];
}

export const FALLBACK_STOP = '\nUser:';

/**
 * Texts up to this many characters are tokenized on the calling thread: a few milliseconds at most, less
 * than a round trip through the prompt process costs a busy server. Longer ones go to the process.
 */
export const INLINE_TOKENIZE_CHARS = 4096;

const ROLE_LABEL: Record<string, string> = { system: 'System', developer: 'System', user: 'User', assistant: 'Assistant', tool: 'Tool' };

/** The template text a model ships, if any. */
export function findChatTemplate(modelDir: string, tokenizerConfig: Record<string, unknown>): string | undefined {
  const t = tokenizerConfig.chat_template;
  if (typeof t === 'string') return t;
  // A list of named templates: the one named "default".
  if (Array.isArray(t)) {
    const d = t.find((x) => x && typeof x === 'object' && (x as { name?: unknown }).name === 'default') as { template?: unknown } | undefined;
    if (typeof d?.template === 'string') return d.template;
  }
  const file = path.join(modelDir, 'chat_template.jinja');
  if (fs.existsSync(file)) return fs.readFileSync(file, 'utf8');
  return undefined;
}

export class ChatFormatter {
  private readonly hasTemplate: boolean;
  private readonly worker: PromptWorker;

  constructor(
    private readonly tokenizer: Tokenizer,
    templateText: string | undefined,
    opts: PromptWorkerOptions = {},
  ) {
    if (templateText !== undefined) {
      // Parsing is bounded by the template's length; only rendering runs the template's loops.
      try {
        new Template(templateText);
      } catch (e) {
        throw new KiviError(`the model's chat template does not parse: ${(e as Error).message}`);
      }
    }
    this.hasTemplate = templateText !== undefined;
    this.worker = new PromptWorker(tokenizer, templateText, opts);
  }

  get kind(): 'template' | 'plain-text' {
    return this.hasTemplate ? 'template' : 'plain-text';
  }

  /** Text → token ids, off the event loop when long (BOS as the tokenizer config says unless `bos` is given). */
  async encode(text: string, bos?: boolean): Promise<number[]> {
    if (text.length <= INLINE_TOKENIZE_CHARS) return this.tokenizer.encode(text, { bos });
    return this.worker.encode(text, bos);
  }

  /** Render messages and encode them as the prompt of the assistant's next turn. */
  async prompt(messages: ChatMessage[]): Promise<ChatPrompt> {
    if (!this.hasTemplate) {
      const text = `${messages.map((m) => `${ROLE_LABEL[m.role] ?? m.role}: ${m.content}\n`).join('')}Assistant:`;
      return { ids: await this.encode(text), stop: [FALLBACK_STOP] };
    }
    const cfg = this.tokenizer.config;
    const text = await this.worker.render({
      messages,
      add_generation_prompt: true,
      bos_token: tokenContent(cfg.bos_token) ?? '',
      eos_token: tokenContent(cfg.eos_token) ?? '',
      unk_token: tokenContent(cfg.unk_token) ?? '',
      pad_token: tokenContent(cfg.pad_token) ?? '',
    });
    return { ids: await this.encode(text, false), stop: [] };
  }

  /** Stop the prompt process. */
  close(): Promise<void> {
    return this.worker.close();
  }
}
