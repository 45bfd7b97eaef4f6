/**
 * cortexstream for Node.js: a llama-family GGUF model served by a continuous-batching engine
 * on its own thread, plus a sentence-embedding model beside it.
 *
 * Every call that waits returns a Promise; the JavaScript thread never blocks on the engine
 * (only `new Engine()` loads the model synchronously). Errors are `Error`s with a stable
 * `code` (see {@link CortexstreamError}).
 *
 * @example
 * ```js
 * import { Engine } from 'cortexstream';
 * const engine = new Engine();
 * for await (const chunk of engine.stream('The quick brown fox', { maxTokens: 32 })) {
 *   process.stdout.write(chunk.text);
 * }
 * await engine.close();
 * ```
 */

/**
 * The engine settings of {@link Engine} and {@link Registry.register}: the core's engine settings
 * (`cortexstream::EngineConfig::setting_names`) in camelCase. The core reads them: an unknown
 * name, a wrong type or a value out of range (not a whole number, below 1, `threads` above 4 per
 * available CPU, a KV cache larger than memory) throws an `Error` with `code: 'invalid_request'`
 * and `param` naming the setting. `null` and `undefined` keep a setting's default.
 */
export interface EngineSettings {
  /** A `tokenizer.json` to use instead of the GGUF's own tokenizer. */
  tokenizer?: string | null;
  /** A sentence-transformers folder for {@link Engine.embed} (default: none). */
  embeddingModel?: string | null;
  /** Most sequences in the running batch (default 32). */
  maxRunning?: number | null;
  /**
   * Token budget of one engine step, its decodes and prompt chunks together (default 2048, at
   * most 2^20): fixed when `targetStepMs` is 0, else the ceiling of the adaptive budget. Every
   * running stream's next token is in every step; prompts are prefilled in chunks beside them.
   * A step with no running stream gives a prompt all of it (a request arriving meanwhile waits
   * for that one step, then goes ahead of the rest of the prompt).
   */
  maxBatchTokens?: number | null;
  /**
   * Target duration of one step in milliseconds, i.e. the inter-token latency of running
   * streams while a prompt is prefilled beside them: the budget adapts to measured step costs
   * so that such a step takes the larger of this and twice the streams' own step (default 25;
   * 0 keeps a fixed budget; above 0 and at most 10000 otherwise).
   */
  targetStepMs?: number | null;
  /** Most prompt tokens one step computes, whatever the budget (default 2048, at most 2^20). */
  maxPrefillTokens?: number | null;
  /** Total KV cache capacity in tokens, shared by all requests (default 16384). */
  kvCacheTokens?: number | null;
  /** Tokens per KV cache block (default 16). */
  blockSize?: number | null;
  /** Context window; default and maximum: the model's. */
  contextLength?: number | null;
  /** Compute threads, at most 4 per available CPU; default: the physical cores. */
  threads?: number | null;
  /** Most requests waiting for a running slot; beyond it submits fail with `overloaded` (default 256). */
  maxQueue?: number | null;
  /**
   * A Jinja chat template used instead of the model's own. A model without one (a base model)
   * needs it for chat requests, which otherwise fail with `chat_template_missing`.
   */
  chatTemplate?: string | null;
  /**
   * Put each request's prompt in its `queued` log record (see {@link setLogListener}); by
   * default prompts are never logged.
   */
  logPrompts?: boolean | null;
  /**
   * How the KV cache stores keys and values: `'f16'` (default) or `'q8_0'` (8 bits with a scale
   * per 32 values: about half the memory per token, for a small logit error). Anything else
   * fails with `invalid_request` naming `kvCacheType`.
   */
  kvCacheType?: 'f16' | 'q8_0' | null;
}

/** How to build an {@link Engine}: the model and the {@link EngineSettings}. */
export interface EngineOptions extends EngineSettings {
  /**
   * GGUF file, or a model cache name (`'smollm2'`, `'gemma3'`) as in Python; default: SmolLM2-135M-Instruct
   * (Q4_1) in the model cache ({@link modelsDir}). A word that is neither an existing file nor a
   * known name, or a known model not yet pulled, throws `model_not_found` with `param: 'model'`.
   */
  model?: string;
  /**
   * A sentence-transformers folder, or the cache name `'minilm'`, for {@link Engine.embed};
   * default: `minilm/` in the model cache when it is there. `null` or `false` loads no embedding
   * model. Names are resolved as for `model` (`param: 'embeddingModel'`).
   */
  embeddingModel?: string | null | false;
}

/**
 * Sampling, stopping and cancellation options of one request: the core's request options
 * (`cortexstream::RequestOptions`) in camelCase, plus `signal`. The core reads them, so an
 * unknown name, a wrong type (a fraction where a count belongs included) or a value out of
 * range rejects with `code: 'invalid_request'` and `param` naming the option, worded as at
 * every other door. `null` and `undefined` keep an option's default.
 */
export interface GenerateOptions {
  /** Most tokens to generate; default: up to the context window. */
  maxTokens?: number;
  /** 0 is greedy (default 0.8). */
  temperature?: number;
  /** Keep the k most likely tokens; 0 disables (default 40). */
  topK?: number;
  /** Nucleus sampling in (0, 1]; 1 disables (default 0.95). */
  topP?: number;
  /** Min-p in [0, 1]; 0 disables (default 0.05). */
  minP?: number;
  /** Multiplicative penalty on tokens already seen; 1 disables (default 1). */
  repetitionPenalty?: number;
  /** OpenAI presence penalty in [-2, 2] (default 0). */
  presencePenalty?: number;
  /** OpenAI frequency penalty in [-2, 2] (default 0). */
  frequencyPenalty?: number;
  /** How many recent tokens the penalties look at; 0 is all (default 64). */
  penaltyLastN?: number;
  /** Seed of this request's sampler; default: random. */
  seed?: number;
  /** Strings that end generation; never part of the output. */
  stop?: string | string[];
  /** Token ids that end generation, besides the model's end-of-generation tokens. */
  stopTokenIds?: number[];
  /** Keep generating past end-of-generation tokens. */
  ignoreEos?: boolean;
  /** Report each sampled token's log-probability and this many top alternatives (at most 20). */
  logprobs?: number;
  /** Higher runs first; equal priorities run in arrival order (default 0). */
  priority?: number;
  /** A label carried by the request's log records (see `setLogListener`), e.g. an HTTP request id. */
  tag?: string;
  /** OpenAI's `logit_bias`: token id -> bias in [-100, 100] added to its logit (-100 in effect bans it). */
  logitBias?: Record<number | string, number>;
  /**
   * Output constraints: give at most one. The output then follows it and the request ends with
   * `'stop'` once complete (`'length'` if `maxTokens` runs out first). A constraint that does
   * not compile rejects with `code: 'invalid_request'` and `param` naming the option.
   */
  /** A JSON schema (object or JSON text) the output validates against. */
  jsonSchema?: Record<string, unknown> | string;
  /** A regular expression the whole output matches. */
  regex?: string;
  /** A Lark grammar (llguidance's dialect) the output follows. */
  grammar?: string;
  /** The output is exactly one of these strings. */
  choices?: string[];
  /** OpenAI's `response_format`. */
  responseFormat?:
    | { type: 'text' }
    | { type: 'json_object' }
    | { type: 'json_schema'; json_schema: { name?: string; schema: Record<string, unknown>; strict?: boolean } };
  /**
   * Tools the model may call (chat only), rendered by the model's chat template; its calls
   * come back in `toolCalls`. Malformed tools reject with `code: 'invalid_request'` and
   * `param: 'tools'` (the message gives the path, e.g. `tools[0].function.name`).
   */
  tools?: Tool[];
  /**
   * `'auto'` (default: the model decides), `'none'` (tools neither shown nor parsed),
   * `'required'` or a named function: the output is then constrained to a call whose
   * arguments validate against the tool's `parameters` schema.
   */
  toolChoice?: 'none' | 'auto' | 'required' | { type: 'function'; function: { name: string } };
  /** More than one call per answer (default true). */
  parallelToolCalls?: boolean;
  /**
   * Aborting cancels the request in the engine; the promise (or iteration) then rejects with
   * `signal.reason` (an `AbortError` by default) once the engine has ended the request.
   */
  signal?: AbortSignal;
}

/** One chat message. */
export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool' | (string & {});
  /** May be null on an assistant turn that only called tools. */
  content: string | null;
  /** An assistant turn's calls, in OpenAI's shape (`arguments` as JSON text or an object). */
  toolCalls?: { id: string; type: 'function'; function: { name: string; arguments: string | Record<string, unknown> } }[];
  /** A `tool` turn: the id of the call it answers. */
  toolCallId?: string;
  /** A `tool` turn: the name of the function that answered. */
  name?: string;
}

/** A function the model may call (OpenAI's shape). */
export interface Tool {
  type: 'function';
  function: { name: string; description?: string; parameters?: Record<string, unknown> };
}

/** A call the model made. */
export interface ToolCall {
  /** Nine letters and digits. */
  id: string;
  name: string;
  /** The arguments as JSON text (an object), as OpenAI returns them. */
  arguments: string;
}

/**
 * Why a request ended. `cancelled` also covers {@link Engine.close}; `tool_calls`: a request
 * with `tools` stopped after calling.
 */
export type FinishReason = 'stop' | 'length' | 'cancelled' | 'error' | 'tool_calls';

/**
 * Which stop ended a request: the detail behind {@link FinishReason}. `eos` (the model's
 * end-of-generation token), `stop_token` (one of `stopTokenIds`; also when that id is an
 * end-of-generation token too), `stop_string` (one of `stop`; the earliest in the text) and
 * `grammar` (the output constraint is complete) have finishReason `stop`; `length`,
 * `cancelled` and `error` have the finishReason of the same name.
 */
export type StopReason =
  | { kind: 'eos' | 'stop_token'; tokenId: number; stopString?: undefined }
  | { kind: 'stop_string'; stopString: string; tokenId?: undefined }
  | { kind: 'grammar' | 'length' | 'cancelled' | 'error'; tokenId?: undefined; stopString?: undefined };

/** Token counts of one request. */
export interface Usage {
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
  /** Prompt tokens served from the prefix cache instead of being computed. */
  cachedPromptTokens: number;
}

/** Nanosecond timings of one request. */
export interface Timings {
  /** Submit until first scheduled. */
  queuedNs: number;
  /** Submit until the first token. */
  timeToFirstTokenNs: number;
  /** First scheduled until the first token. */
  prefillNs: number;
  /** First token until the end. */
  decodeNs: number;
  /** Mean time per token after the first. */
  perTokenNs: number;
  /** Submit until the end. */
  totalNs: number;
}

/** Log-probability of a sampled token and its top alternatives. */
export interface TokenLogprobs {
  tokenId: number;
  logprob: number;
  /**
   * The token's raw bytes (as OpenAI's `bytes`). A byte-level token may be part of a
   * multi-byte character, so these are not always valid UTF-8 on their own.
   */
  bytes: number[];
  top: { tokenId: number; logprob: number; bytes: number[] }[];
}

/**
 * One piece of a stream. Token chunks carry `tokenId` and the newly visible `text` (possibly
 * empty while a multi-byte character or a possible stop string is held back); the last chunk
 * has empty text and carries `finishReason`, `usage` and `timings`.
 */
export interface Chunk {
  text: string;
  tokenId?: number;
  /** Present when `logprobs` was requested. */
  logprobs?: TokenLogprobs;
  finishReason?: FinishReason;
  /** Which stop ended the request; last chunk only. */
  stopReason?: StopReason;
  usage?: Usage;
  timings?: Timings;
  /** Set when `finishReason` is `error`. */
  error?: string;
  /** Calls completed by this chunk (requests with `tools` only; call text is held back). */
  toolCalls?: ToolCall[];
}

/** The whole result of one request. */
export interface Completion {
  text: string;
  /** Every sampled token, including an end-of-generation token that ended the request. */
  tokenIds: number[];
  finishReason: FinishReason;
  /** Which stop ended the request. */
  stopReason: StopReason;
  usage: Usage;
  timings: Timings;
  /** One entry per token when `logprobs` was requested. */
  logprobs?: TokenLogprobs[];
  /** Set when `finishReason` is `error`. */
  error?: string;
  /** The calls the answer made (requests with `tools` only; `text` is the answer without them). */
  toolCalls?: ToolCall[];
}

/** What the engine has loaded. */
export interface ModelInfo {
  name: string;
  path: string;
  architecture: string;
  /** The effective context window. */
  contextLength: number;
  vocabSize: number;
  bosTokenId?: number;
  eosTokenId?: number;
  embedding?: { name: string; path: string; dim: number; maxTokens: number };
}

/** A histogram with cumulative buckets `[upperBound, count]`, as Prometheus exposes them. */
export interface Histogram {
  buckets: [number, number][];
  sum: number;
  count: number;
}

/** The engine's counters (since start), gauges (now) and histograms. */
export interface Metrics {
  requestsSubmitted: number;
  requestsFinished: number;
  requestsCancelled: number;
  requestsFailed: number;
  requestsRejected: number;
  queueDepth: number;
  running: number;
  /** Prompt tokens of accepted requests: once their prompts are consumed, prefixCacheHitTokens + prefillTokensTotal. */
  promptTokensTotal: number;
  /** Prompt tokens computed for the first time (cache hits and recomputation excluded). */
  prefillTokensTotal: number;
  /** Prompt tokens whose KV came from the prefix cache (each prompt token of a request at most once). */
  prefixCacheHitTokens: number;
  /** Tokens computed again after a preemption took their KV away. */
  recomputedTokensTotal: number;
  /** Tokens the last planned step could compute: its decodes plus the prompt tokens the step budget granted. */
  stepTokenBudget: number;
  generatedTokensTotal: number;
  steps: number;
  /** Steps that failed (an error or a caught panic, also in a compute worker); their requests ended with an error. */
  stepFailures: number;
  preemptions: number;
  kvBlocksTotal: number;
  kvBlocksFree: number;
  /** Blocks of the sliding-window layers' own pool (0 for models without sliding layers). */
  kvSlidingBlocksTotal: number;
  kvSlidingBlocksFree: number;
  embeddingRequests: number;
  batchSize: Histogram;
  timeToFirstTokenSeconds: Histogram;
  perTokenSeconds: Histogram;
}

/**
 * The errors cortexstream throws and rejects with: plain `Error`s with a stable `code`, the
 * same string the C library, the Python package and the REST server report.
 */
export interface CortexstreamError extends Error {
  code:
    | 'invalid_request'
    | 'context_length_exceeded'
    | 'model_load_error'
    | 'model_not_found'
    | 'tokenizer_error'
    | 'chat_template_error'
    | 'chat_template_missing'
    | 'engine_closed'
    | 'overloaded'
    | 'cancelled'
    | 'no_embedding_model'
    | 'internal_error'
    | 'io_error';
  /** The option at fault (`temperature`, `topP`, `maxTokens`, `prompt`, ...), when there is one. */
  param?: string;
}

/**
 * A request's chunks as they are generated, for `for await`. Breaking out of the loop
 * cancels the request.
 */
export interface ChunkStream extends AsyncIterable<Chunk> {
  /** The whole result once the request ends; rejects like the iteration does. */
  readonly completion: Promise<Completion>;
  /** Asks the engine to stop; the stream then ends with finishReason `cancelled`. */
  cancel(): void;
}

/** A loaded model serving any number of concurrent requests. */
export declare class Engine {
  /**
   * Loads the model (synchronously, about half a second for the default) and starts the
   * engine thread. Throws a {@link CortexstreamError} (`model_load_error`, `invalid_request`).
   */
  constructor(options?: EngineOptions);

  /** Generates a completion of a text prompt or of token ids. */
  generate(prompt: string | number[], options?: GenerateOptions): Promise<Completion>;

  /** Generates the assistant's reply to chat messages, rendered with the model's template. */
  chat(messages: ChatMessage[], options?: GenerateOptions): Promise<Completion>;

  /** Streams a completion; errors (invalid options, aborts) surface while iterating. */
  stream(prompt: string | number[], options?: GenerateOptions): ChunkStream;

  /** Streams the assistant's reply to chat messages. */
  streamChat(messages: ChatMessage[], options?: GenerateOptions): ChunkStream;

  /**
   * Streams a completion to `callback`, called on the JavaScript thread for every chunk (the
   * last one included). If the callback throws, the request is cancelled and the promise
   * rejects with what it threw.
   */
  streamWithCallback(
    prompt: string | number[],
    options: GenerateOptions | undefined,
    callback: (chunk: Chunk) => void,
  ): Promise<Completion>;
  streamWithCallback(prompt: string | number[], callback: (chunk: Chunk) => void): Promise<Completion>;

  /** Unit-length embedding vectors, one per text; rejects with `no_embedding_model` without one. */
  embed(texts: string | string[]): Promise<number[][]>;

  /** Token ids of `text`; special tokens such as BOS only when asked for. */
  tokenize(text: string, addSpecialTokens?: boolean): number[];

  /** Text of token ids. */
  detokenize(ids: number[]): string;

  /** Renders chat messages with the model's template, by default ending with the assistant header. */
  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt?: boolean): string;

  /** What the engine has loaded. */
  readonly modelInfo: ModelInfo;

  /** A snapshot of the engine's metrics. */
  metrics(): Metrics;

  /** Whether {@link Engine.close} has been called. */
  readonly closed: boolean;

  /**
   * Cancels every request in flight or queued (they end with finishReason `cancelled`) and stops
   * the engine thread. Idempotent; afterwards new requests fail with `engine_closed`.
   */
  close(): Promise<void>;
}

/**
 * Ollama's keep-alive: seconds (negative: forever, `0`: unload as soon as the model is idle) or a
 * duration string such as `'5m'`, `'1h30m'`, `'500ms'`.
 */
export type KeepAlive = number | string;

/** How a {@link Registry} manages memory and time. */
export interface RegistryOptions {
  /**
   * Most bytes of loaded models: loading another unloads idle ones, least recently used first.
   * Models in use are never unloaded for it. Default: no budget.
   */
  memoryBudgetBytes?: number | null;
  /** Keep-alive of a model whose registration and request give none (default 5 minutes). */
  keepAlive?: KeepAlive | null;
}

/** A registration: a generation model's {@link EngineSettings}, or an embedding model. */
export interface RegisterOptions extends EngineSettings {
  /** `model` is a sentence-transformers folder served on its own; it takes only `threads`. */
  embedding?: boolean | null;
  /** This model's keep-alive when a request gives none. */
  keepAlive?: KeepAlive | null;
}

/** A loaded model as {@link Registry.loaded} lists it. */
export interface LoadedModel {
  name: string;
  isEmbedding: boolean;
  /** Memory the loaded model holds (weights and KV cache). */
  memoryBytes: number;
  /** Leases held on it now. */
  activeRequests: number;
  /** When it unloads if no request comes; `null`: never. */
  expiresAt: Date | null;
}

/**
 * Several models by name, each its own engine (own KV cache and step loop), loaded on first
 * {@link Registry.get} and unloaded when idle past its keep-alive (Ollama's semantics) or, least
 * recently used first, to stay within a memory budget. A model in use is never unloaded under a
 * request: unloading only drops the registry's hold, the model is freed when its last lease ends.
 *
 * @example
 * ```js
 * const registry = new Registry();
 * registry.register('chat', 'smollm2', { contextLength: 2048 }); // or a GGUF path
 * const lease = await registry.get('chat');
 * try {
 *   console.log((await lease.engine.generate('Hello', { maxTokens: 8 })).text);
 * } finally {
 *   await lease.release();
 * }
 * ```
 */
export declare class Registry {
  /** Throws `invalid_request` naming a bad option. */
  constructor(options?: RegistryOptions);

  /**
   * Registers `model` (a GGUF path, or with `embedding: true` a sentence-transformers folder, or
   * a model cache name: `'smollm2'`, `'minilm'`, `'gemma3'`) under `name`; loads nothing yet. A
   * bad setting throws `invalid_request` naming it now; a taken name throws `invalid_request`
   * with `param: 'name'`; a word that is neither an existing path nor a known cache name, or a
   * known model not yet pulled, throws `model_not_found` with `param: 'model'`, naming the known
   * names or the pull command.
   */
  register(name: string, model: string, options?: RegisterOptions): void;

  /** The registered names, sorted. */
  names(): string[];

  /**
   * The model `name`, loaded now if needed; hold the lease while using it and release it after.
   * `keepAlive` becomes the model's from now on. Rejects with `model_not_found` naming an
   * unknown model, `engine_closed` after {@link Registry.close}.
   */
  get(name: string, keepAlive?: KeepAlive | null): Promise<Lease>;

  /** Loads `name` if needed and starts its keep-alive countdown. */
  load(name: string, keepAlive?: KeepAlive | null): Promise<void>;

  /** Unloads `name` now (leased requests finish first); resolves to whether it was loaded. */
  unload(name: string): Promise<boolean>;

  /** The loaded models, by name, after unloading the expired ones. */
  loaded(): LoadedModel[];

  /** Unloads every model; later `get`s reject with `engine_closed`. Idempotent. */
  close(): Promise<void>;
}

/** A hold on one registry model: it stays loaded until {@link Lease.release}. */
export declare class Lease {
  readonly name: string;
  readonly isEmbedding: boolean;
  /**
   * The generation engine, `null` for an embedding model. Its `close()` leaves the model to the
   * registry. Throws `engine_closed` when first read after {@link Lease.release}.
   */
  readonly engine: Engine | null;
  /** Unit-length embedding vectors with the embedding model (or the engine's). */
  embed(texts: string | string[]): Promise<number[][]>;
  /** Ends the hold: the model's keep-alive countdown starts (keep-alive 0 unloads it). Idempotent. */
  release(): Promise<void>;
}

/** The model cache: `$CORTEXSTREAM_CACHE/models`, default `~/.cache/cortexstream/models`. */
export declare function modelsDir(): string;

/** One structured log record of the library. */
export interface LogRecord {
  level: 'error' | 'warn' | 'info' | 'debug' | 'trace';
  /** `cortexstream::request`, `cortexstream::model`, `cortexstream::kv` or `cortexstream::engine`. */
  target: string;
  /** What happened: `queued`, `prefill start`, `first token`, `finished`, `cancelled`, `model loaded`, ... */
  message: string;
  /** A request's `request_id` (the engine's) and `tag`, `reason`, token counts, ...; never prompt text. */
  fields: Record<string, unknown>;
}

/**
 * Calls `listener` on the JavaScript thread for every record at `level` (default 'info') and more
 * severe; `null` stops. Records are queued by the engine threads, never waited for; a listener
 * that throws is reported with `process.emitWarning`. The listener does not keep the process alive.
 */
export declare function setLogListener(
  listener: ((record: LogRecord) => void) | null,
  level?: 'error' | 'warn' | 'info' | 'debug' | 'trace',
): void;
