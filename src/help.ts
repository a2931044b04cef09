// Help screens from the flag specs: grouped (store, run, logging, ...), flags left-aligned with a placeholder that
// says what goes there, descriptions wrapped to the terminal's width (80 columns when stdout is not a terminal).
// Plain text: no colour codes, so it reads the same in a pipe, a file or journald.
import { type FlagSpec, type FlagSpecs, RUN_HELP_GROUPS, envName } from "./flags.ts";

export interface HelpCommand {
  /** "flannel-bin run" */
  path: string;
  description: string;
  /** Extra usage lines, e.g. "flanneld [flags]". */
  usage?: string[];
  specs?: FlagSpecs;
  subcommands?: { name: string; description: string }[];
}

/** Columns to wrap at: the terminal's, else 80. */
export function helpWidth(stream: { isTTY?: boolean; columns?: number } = process.stdout): number {
  return stream.isTTY && stream.columns && stream.columns >= 40 ? stream.columns : 80;
}

/** What goes in a flag's value, for `--flag PLACEHOLDER`. */
export function placeholder(name: string, spec: FlagSpec): string {
  if (spec.placeholder) return spec.placeholder;
  if (spec.type === "boolean") return "";
  if (spec.choices && spec.choices.length <= 4) return spec.choices.join("|");
  if (spec.type === "duration") return "DURATION";
  if (spec.type === "int") return /port$/.test(name) ? "PORT" : /margin$/.test(name) ? "MINUTES" : "N";
  if (/(file|path|creds)$/.test(name)) return "FILE";
  if (/(url|endpoints)$/.test(name)) return "URL,...";
  if (/-ip$/.test(name)) return "IP";
  if (/prefix$/.test(name)) return "PREFIX";
  if (/(user|username|bucket|name)$/.test(name)) return "NAME";
  if (/(password|token)$/.test(name)) return "SECRET";
  if (name === "iface") return "NAME|IP";
  if (/regex$/.test(name)) return "REGEX";
  return spec.type === "list" ? "VALUE,..." : "VALUE";
}

/** Greedy word wrap of `text` into lines of at most `width` characters (a longer word gets a line of its own). */
export function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let cur = "";
  for (const w of text.split(/\s+/).filter(Boolean)) {
    if (cur && cur.length + 1 + w.length > width) {
      lines.push(cur);
      cur = w;
    } else cur = cur ? `${cur} ${w}` : w;
  }
  if (cur) lines.push(cur);
  return lines.length ? lines : [""];
}

function flagText(name: string, spec: FlagSpec): string {
  const ph = placeholder(name, spec);
  if (spec.type === "boolean") return spec.default === true ? `--${name}=false` : `--${name}`;
  return `--${name} ${ph}`;
}

function flagNote(name: string, spec: FlagSpec): string {
  const parts: string[] = [];
  if (spec.unsupported === undefined && spec.default !== undefined && spec.default !== "" && spec.default !== false)
    parts.push(`default ${spec.default}`);
  if (spec.unsupported === undefined) parts.push(envName(name));
  return parts.length ? ` (${parts.join("; ")})` : "";
}

/** Assigns each flag to the first group holding that very spec; the rest go to "Flags". */
function grouped(specs: FlagSpecs): [string, [string, FlagSpec][]][] {
  const out = new Map<string, [string, FlagSpec][]>();
  for (const [name, spec] of Object.entries(specs)) {
    const g = RUN_HELP_GROUPS.find(([, gs]) => gs[name] === spec)?.[0] ?? "Flags";
    if (!out.has(g)) out.set(g, []);
    out.get(g)!.push([name, spec]);
  }
  const order = [...RUN_HELP_GROUPS.map(([t]) => t), "Flags"];
  return [...out.entries()].sort((a, b) => order.indexOf(a[0]) - order.indexOf(b[0]));
}

export function renderHelp(cmd: HelpCommand, width = helpWidth()): string {
  const out: string[] = [];
  const para = (text: string, indent = "") => {
    for (const l of wrap(text, width - indent.length)) out.push(indent + l);
  };
  para(`${cmd.path}: ${cmd.description}`);
  out.push("", "Usage:");
  const usage = cmd.usage ?? [`${cmd.path}${cmd.subcommands?.length ? " <command>" : ""}${cmd.specs ? " [flags]" : ""}`];
  for (const u of usage) para(u, "  ");
  if (cmd.subcommands?.length) {
    out.push("", "Commands:");
    const col = Math.min(Math.max(...cmd.subcommands.map((s) => s.name.length)) + 4, 24);
    for (const s of cmd.subcommands) {
      const lines = wrap(s.description, width - col);
      out.push(`  ${s.name.padEnd(col - 2)}${lines[0]}`, ...lines.slice(1).map((l) => " ".repeat(col) + l));
    }
  }
  const groups = cmd.specs ? grouped(cmd.specs) : [];
  // One flag column for the whole screen, so every group lines up; wide enough for most flags, never more than 40%.
  const texts = groups.flatMap(([, fl]) => fl.map(([n, s]) => flagText(n, s).length));
  const col = Math.min(Math.max(0, ...texts) + 4, Math.max(20, Math.floor(width * 0.4)));
  for (const [title, flags] of groups) {
    out.push("", `${title}:`);
    for (const [name, spec] of flags) {
      const ft = `  ${flagText(name, spec)}`;
      const desc = wrap(spec.description + flagNote(name, spec), width - col);
      if (ft.length + 2 <= col) out.push(ft.padEnd(col) + desc[0], ...desc.slice(1).map((l) => " ".repeat(col) + l));
      else out.push(ft, ...desc.map((l) => " ".repeat(col) + l));
    }
  }
  if (cmd.specs) {
    out.push("");
    para(
      "Flags take Go's spellings too (-flag=value, -flag value, --flag value); a boolean is --flag or --flag=false. " +
        "Every flag can come from its FLANNELD_ variable; the command line wins.",
    );
  }
  return `${out.map((l) => l.trimEnd()).join("\n")}\n`;
}
