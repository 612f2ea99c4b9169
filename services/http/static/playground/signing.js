// Signed requests (cidserve-request-v2), built in the browser exactly as the server rebuilds
// them (services/chain/signing.py, docs/LICENSING.md): the canonical string, the body's
// SHA-256, and the five X-Cidserve-* headers from an EIP-1193 wallet's personal_sign.

export const VERSION = "cidserve-request-v2";
export const COVERED_ALWAYS = [
  "inference-header-content-length",
  "x-tensor-dtype",
  "x-tensor-input",
  "x-tensor-shape",
];
const COVERED_PREFIX = "x-tensor-";
const MAX_COVERED_HEADERS = 16;
const ADDRESS_RE = /^0x[0-9a-fA-F]{40}$/;
const SIGNATURE_RE = /^0x[0-9a-fA-F]{130}$/;

/** The covered headers of `headers` (an object, any case) as sorted [name, value] pairs. */
export function coveredHeaders(headers) {
  const found = new Map(COVERED_ALWAYS.map((name) => [name, ""]));
  for (const [name, value] of Object.entries(headers || {})) {
    const low = name.toLowerCase();
    if (low.startsWith(COVERED_PREFIX) || found.has(low)) {
      found.set(low, String(value).trim());
    }
  }
  if (found.size > MAX_COVERED_HEADERS) {
    throw new Error(`more than ${MAX_COVERED_HEADERS} X-Tensor-* headers`);
  }
  return [...found.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

/** The exact text a caller signs; throws when a part holds a line break. */
export function canonicalString({
  method,
  target,
  host,
  contentType,
  covered,
  bodyHash,
  timestamp,
  nonce,
  signer,
}) {
  const lines = [
    VERSION,
    method.toUpperCase(),
    target,
    host.trim().toLowerCase(),
    (contentType || "").trim().toLowerCase(),
    bodyHash,
    String(timestamp),
    nonce,
    signer.toLowerCase(),
    ...covered.map(([name, value]) => `${name}:${value}`),
  ];
  const text = lines.join("\n");
  if (text.includes("\r") || text.split("\n").length !== lines.length) {
    throw new Error("a signed part holds a line break");
  }
  return text;
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Lower-case hex SHA-256 of `bytes` (a Uint8Array): WebCrypto where the page may use it
 * (https, or loopback), else the plain implementation below. */
export async function sha256Hex(bytes) {
  if (globalThis.crypto && globalThis.crypto.subtle) {
    return hex(new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", bytes)));
  }
  return sha256HexPlain(bytes);
}

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
  0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
  0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
  0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
  0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
  0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
  0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
  0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
  0xc67178f2,
]);

/** SHA-256 without WebCrypto (pages served over plain http on a non-loopback host). */
export function sha256HexPlain(bytes) {
  const bitLength = bytes.length * 8;
  const padded = new Uint8Array(((bytes.length + 9 + 63) >> 6) << 6);
  padded.set(bytes);
  padded[bytes.length] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(bitLength / 0x100000000));
  view.setUint32(padded.length - 4, bitLength >>> 0);
  const h = new Uint32Array([
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
    0x5be0cd19,
  ]);
  const w = new Uint32Array(64);
  const rotr = (x, n) => (x >>> n) | (x << (32 - n));
  for (let off = 0; off < padded.length; off += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(off + i * 4);
    for (let i = 16; i < 64; i++) {
      const s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) >>> 0;
    }
    let [a, b, c, d, e, f, g, hh] = h;
    for (let i = 0; i < 64; i++) {
      const t1 =
        (hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i]) >>>
        0;
      const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) >>> 0;
      hh = g;
      g = f;
      f = e;
      e = (d + t1) >>> 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) >>> 0;
    }
    const add = [a, b, c, d, e, f, g, hh];
    for (let i = 0; i < 8; i++) h[i] = (h[i] + add[i]) >>> 0;
  }
  const out = new Uint8Array(32);
  const outView = new DataView(out.buffer);
  for (let i = 0; i < 8; i++) outView.setUint32(i * 4, h[i]);
  return hex(out);
}

/** A fresh nonce: 32 hex characters (the server accepts 8-64 of [A-Za-z0-9_-], once). */
export function newNonce() {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return hex(bytes);
}

/** `text` as UTF-8, 0x-hex: the message form EIP-1193 wallets take for personal_sign. */
export function utf8Hex(text) {
  return "0x" + hex(new TextEncoder().encode(text));
}

/** The request target a browser puts on the request line for `url`: path plus ?query. */
export function requestTarget(url) {
  const parsed = new URL(url, globalThis.location.href);
  return parsed.pathname + parsed.search;
}

/**
 * The X-Cidserve-* headers for one request, signed by the wallet `provider` (EIP-1193).
 * `headers` are the other headers the request is sent with (Content-Type, X-Tensor-*);
 * `body` the exact bytes (Uint8Array). The host is the page's own (the request goes there).
 */
export async function signRequest(provider, { method, url, headers, body }) {
  const accounts = await provider.request({ method: "eth_requestAccounts" });
  const signer = Array.isArray(accounts) ? accounts[0] : undefined;
  if (typeof signer !== "string" || !ADDRESS_RE.test(signer)) {
    throw new Error("the wallet returned no account");
  }
  const lower = Object.fromEntries(
    Object.entries(headers || {}).map(([k, v]) => [k.toLowerCase(), v]),
  );
  const timestamp = Math.floor(Date.now() / 1000);
  const nonce = newNonce();
  const text = canonicalString({
    method,
    target: requestTarget(url),
    host: globalThis.location.host,
    contentType: lower["content-type"],
    covered: coveredHeaders(lower),
    bodyHash: await sha256Hex(body || new Uint8Array()),
    timestamp,
    nonce,
    signer,
  });
  const signature = await provider.request({
    method: "personal_sign",
    params: [utf8Hex(text), signer],
  });
  if (typeof signature !== "string" || !SIGNATURE_RE.test(signature)) {
    throw new Error("the wallet returned no 65-byte signature");
  }
  return {
    "X-Cidserve-Version": VERSION,
    "X-Cidserve-Address": signer,
    "X-Cidserve-Timestamp": String(timestamp),
    "X-Cidserve-Nonce": nonce,
    "X-Cidserve-Signature": signature,
  };
}
