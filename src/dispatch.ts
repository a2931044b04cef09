// What a command line runs (src/main.ts imports this once the re-exec check is done). The name it is run under
// matters, as for busybox: `flanneld` is `flannel-bin run` (flanneld's command lines work unchanged),
// `mk-docker-opts.sh` is `flannel-bin mk-docker-opts`. `flannel-bin <flags>` without a command is
// `flannel-bin run <flags>` too.
import { classify } from "./runtime-env.ts";
import { writeSync } from "node:fs";
import { type CommandDef, runCommand } from "citty";
import { VERSION, invokedAs, main } from "./cli.ts";
import { FlagError, specsOfArgs } from "./flags.ts";
import { type HelpCommand, renderHelp } from "./help.ts";
import { consola, setUpLogging } from "./log.ts";
import { mkDockerOpts } from "./mk-docker-opts.ts";

type Resolvable<T> = T | (() => T | Promise<T>) | Promise<T>;
async function resolve<T>(v: Resolvable<T>): Promise<T> {
  return typeof v === "function" ? await (v as () => T | Promise<T>)() : await v;
}

/** The help screen of the deepest command named in argv, e.g. `flannel-bin config put --help`. */
async function help(argv: string[], prog: string): Promise<string> {
  let cmd: CommandDef = main;
  const path = [prog];
  for (const a of argv) {
    const subs = (await resolve(cmd.subCommands as Resolvable<Record<string, Resolvable<CommandDef>>> | undefined)) ?? {};
    if (!(a in subs)) break;
    cmd = await resolve(subs[a]!);
    if (!(prog === "flanneld" && a === "run")) path.push(a); // flanneld is `run` under another name
  }
  const meta = (await resolve(cmd.meta as Resolvable<{ description?: string }> | undefined)) ?? {};
  const args = await resolve(cmd.args as Resolvable<object> | undefined);
  const subs = (await resolve(cmd.subCommands as Resolvable<Record<string, Resolvable<CommandDef>>> | undefined)) ?? {};
  const h: HelpCommand = {
    path: path.join(" "),
    description: meta.description ?? "",
    specs: args ? specsOfArgs.get(args as never) : undefined,
  };
  const subList = [];
  for (const [name, def] of Object.entries(subs)) {
    const m = (await resolve((await resolve(def)).meta as Resolvable<{ description?: string }> | undefined)) ?? {};
    subList.push({ name, description: m.description ?? "" });
  }
  if (subList.length) h.subcommands = subList;
  if (path.length === 1 && prog !== "flanneld") {
    h.subcommands?.push({
      name: "mk-docker-opts",
      description: "write Docker options from subnet.env (flannel's mk-docker-opts.sh; see mk-docker-opts -h)",
    });
    h.usage = [`${prog} <command> [flags]`, `${prog} [flags]   (no command: run)`];
  } else if (path[1] === "run" || prog === "flanneld")
    h.usage = [`${h.path} [flags]`, "flannel-bin [flags]   (no command: run)", "flanneld [flags]   (a link named flanneld runs the agent)"];
  return renderHelp(h);
}

async function entry(argv0: string, argv: string[]): Promise<void> {
  await setUpLogging();
  // The one decision of what this command line is (runtime-env.ts: the re-exec asks the same).
  const inv = classify(argv0, argv);
  if (inv.kind === "mk-docker-opts") process.exit(mkDockerOpts(inv.args, inv.name));
  if (inv.kind === "version") {
    writeSync(1, `${VERSION}\n`); // not process.stdout: making that stream costs more than the rest of --version
    return;
  }
  invokedAs.flanneld = inv.flanneld;
  if (inv.kind === "help") {
    process.stdout.write(await help(inv.args, inv.flanneld ? "flanneld" : "flannel-bin"));
    if (inv.args.length === 0) process.exitCode = 2;
    return;
  }
  try {
    await runCommand(main, { rawArgs: inv.args });
  } catch (e) {
    const err = e as Error & { code?: string };
    const msg = err.message.replace(/\x1b\[[0-9;]*m/g, "");
    consola.error(msg);
    process.exitCode = e instanceof FlagError || err.code === "E_UNKNOWN_COMMAND" || err.code === "E_NO_COMMAND" ? 2 : 1;
  }
}

await entry(process.argv0, process.argv.slice(2));
