// NATS KV key scheme (logical store key -> NATS KV key). NATS KV keys allow only [-/_=.a-zA-Z0-9], "." separates
// tokens.
//   "/"                 -> "."      (path segments become tokens, so prefix "subnets/" lists as filter "subnets.>")
//   "."                 -> "_"
//   ":"                 -> "="
//   a-z A-Z 0-9 "-"     -> themselves
//   any other character -> "/" + two lowercase hex digits per UTF-8 byte ("_" -> "/5f", "=" -> "/3d", "&" -> "/26")
//   The scheme knows nothing of what keys mean: a dual-stack subnet key's "&" is escaped like any other character.
//   Examples:  config                                   -> config
//              subnets/10.5.52.0-24                     -> subnets.10_5_52_0-24
//              subnets/10.5.52.0-24&fc00:0:0:34::-64    -> subnets.10_5_52_0-24/26fc00=0=0=34==-64
//   Empty path segments ("a//b", "") are rejected. Decoding is exact: a NATS key that is not the
//   encoding of some logical key is skipped with a warning.

const LITERAL_RE = /^[a-zA-Z0-9-]$/;
const textEncoder = new TextEncoder();

function encodePart(part: string, key: string): string {
  if (part === "") throw new Error(`NATS store: key ${JSON.stringify(key)} has an empty path segment or part`);
  let out = "";
  for (const ch of part) {
    if (LITERAL_RE.test(ch)) out += ch;
    else if (ch === ".") out += "_";
    else if (ch === ":") out += "=";
    else for (const b of textEncoder.encode(ch)) out += `/${b.toString(16).padStart(2, "0")}`;
  }
  return out;
}

/** Logical key ("subnets/10.5.52.0-24") -> NATS KV key ("subnets.10_5_52_0-24"). Throws on an unusable key. */
export function encodeNatsKey(key: string): string {
  return key
    .split("/")
    .map((seg) => encodePart(seg, key))
    .join(".");
}

function decodeToken(tok: string): string | null {
  const bytes: number[] = [];
  for (let i = 0; i < tok.length; i++) {
    const ch = tok[i]!;
    if (ch === "_") bytes.push(0x2e);
    else if (ch === "=") bytes.push(0x3a);
    else if (ch === "/") {
      const hex = tok.slice(i + 1, i + 3);
      if (!/^[0-9a-f]{2}$/.test(hex)) return null;
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else if (LITERAL_RE.test(ch)) bytes.push(ch.charCodeAt(0));
    else return null;
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array(bytes));
  } catch {
    return null;
  }
}

/** NATS KV key -> logical key, or null if it is not the exact encoding of any logical key. */
export function decodeNatsKey(natsKey: string): string | null {
  const tokens = natsKey.split(".");
  const parts: string[] = [];
  for (const tok of tokens) {
    const part = decodeToken(tok);
    if (part === null || part === "") return null;
    parts.push(part);
  }
  const out = parts.join("/");
  // Only canonical encodings decode, so that decode(encode(k)) == k and encode(decode(n)) == n.
  try {
    return encodeNatsKey(out) === natsKey ? out : null;
  } catch {
    return null;
  }
}

/** The subject filter (relative to the bucket) covering every key under a logical prefix; callers still check startsWith. */
export function natsPrefixFilter(prefix: string): string {
  const cut = prefix.lastIndexOf("/");
  return cut < 0 ? ">" : `${encodeNatsKey(prefix.slice(0, cut))}.>`;
}
