/** Response bodies and stream chunks in the shapes of the OpenAI API, and its error object. */
import { randomUUID } from 'node:crypto';
import type { FinishReason } from '../engine/generate.js';

export type Endpoint = 'completions' | 'chat';

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export function usage(prompt: number, completion: number): Usage {
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

/** OpenAI reports end-of-sequence and stop strings alike as "stop". */
export function finishReason(r: FinishReason): 'stop' | 'length' {
  return r === 'length' ? 'length' : 'stop';
}

export function errorType(status: number): string {
  if (status === 429) return 'rate_limit_error';
  if (status === 408) return 'timeout_error';
  if (status >= 500) return 'server_error';
  return 'invalid_request_error';
}

export function errorBody(status: number, message: string, param: string | null = null, code: string | null = null): ErrorBody {
  return { error: { message, type: errorType(status), param, code } };
}

/** Identity shared by every chunk of one response. */
export class ResponseId {
  readonly id: string;
  readonly created = Math.floor(Date.now() / 1000);
  constructor(
    readonly endpoint: Endpoint,
    readonly model: string,
  ) {
    this.id = `${endpoint === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replaceAll('-', '')}`;
  }

  /** The whole response of a non-streaming request. */
  full(text: string, reason: FinishReason, u: Usage): object {
    const { id, created, model } = this;
    if (this.endpoint === 'chat') {
      return {
        id,
        object: 'chat.completion',
        created,
        model,
        choices: [{ index: 0, message: { role: 'assistant', content: text }, logprobs: null, finish_reason: finishReason(reason) }],
        usage: u,
      };
    }
    return {
      id,
      object: 'text_completion',
      created,
      model,
      choices: [{ index: 0, text, logprobs: null, finish_reason: finishReason(reason) }],
      usage: u,
    };
  }

  /** A stream chunk: text (and the first chat chunk's role), or the final chunk with the finish reason. */
  chunk(text: string, reason: FinishReason | null, first = false): object {
    const { id, created, model } = this;
    const fr = reason === null ? null : finishReason(reason);
    if (this.endpoint === 'chat') {
      const delta = reason !== null ? {} : first ? { role: 'assistant', content: text } : { content: text };
      return { id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta, logprobs: null, finish_reason: fr }] };
    }
    return { id, object: 'text_completion', created, model, choices: [{ index: 0, text, logprobs: null, finish_reason: fr }] };
  }

  /** The extra last chunk with usage that `stream_options.include_usage` asks for. */
  usageChunk(u: Usage): object {
    const { id, created, model } = this;
    return { id, object: this.endpoint === 'chat' ? 'chat.completion.chunk' : 'text_completion', created, model, choices: [], usage: u };
  }
}
