#!/usr/bin/env bun
// Entry point of the flannel-bin binary.
import { runCommand, showUsage } from "citty";
import { consola } from "consola";
import { VERSION, main } from "./cli.ts";
import { FlagError } from "./flags.ts";

async function entry(argv: string[]): Promise<void> {
  if (argv.length === 1 && (argv[0] === "--version" || argv[0] === "-version" || argv[0] === "-v")) {
    process.stdout.write(`${VERSION}\n`);
    return;
  }
  if (argv.length === 0 || argv.some((a) => a === "--help" || a === "-h" || a === "-help")) {
    // Show the usage of the deepest subcommand named before the help flag.
    let cmd = main;
    let parent = undefined as typeof main | undefined;
    for (const a of argv) {
      const subs = (await (typeof cmd.subCommands === "function" ? cmd.subCommands() : cmd.subCommands)) as
        | Record<string, typeof main>
        | undefined;
      if (!subs || !(a in subs)) break;
      parent = cmd;
      cmd = (await (typeof subs[a] === "function" ? (subs[a] as unknown as () => Promise<typeof main>)() : subs[a])) as typeof main;
    }
    await showUsage(cmd, parent);
    if (argv.length === 0) process.exitCode = 2;
    return;
  }
  try {
    await runCommand(main, { rawArgs: argv });
  } catch (e) {
    const err = e as Error & { code?: string };
    if (e instanceof FlagError || err.code === "E_UNKNOWN_COMMAND" || err.code === "E_NO_COMMAND") {
      consola.error(err.message.replace(/\x1b\[[0-9;]*m/g, ""));
      process.exitCode = 2;
    } else {
      consola.error(err.message);
      process.exitCode = 1;
    }
  }
}

await entry(process.argv.slice(2));
