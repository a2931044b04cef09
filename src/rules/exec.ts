// Running iptables-restore / iptables-save / nft / ip: bounded in time, optionally inside a network namespace
// (tests), input on stdin so a whole table is one process.

import { endChild, writeChild } from "../child-stdin.ts";

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export type Exec = (argv: string[], stdin?: string) => Promise<ExecResult>;

const TIMEOUT_MS = 20_000;

/** The command as run: under `ip netns exec <netns>` (which execs it: the PID stays the command's) in tests. */
export const wrapArgv = (netns: string | undefined, argv: string[]): string[] => (netns ? ["ip", "netns", "exec", netns, ...argv] : argv);

/** An Exec that runs commands directly, or under `ip netns exec <netns>` when a namespace is given. */
export function makeExec(netns?: string): Exec {
  return async (argv, stdin) => {
    const cmd = wrapArgv(netns, argv);
    let p: ReturnType<typeof Bun.spawn>;
    try {
      // env: process.env, not the start-up environment Bun would pass (NOTIFY_SOCKET is removed from it at start).
      p = Bun.spawn(cmd, { stdin: stdin === undefined ? "ignore" : "pipe", stdout: "pipe", stderr: "pipe", env: process.env });
    } catch (e) {
      return { code: 127, stdout: "", stderr: (e as Error).message };
    }
    const timer = setTimeout(() => p.kill("SIGKILL"), TIMEOUT_MS);
    try {
      if (stdin !== undefined && p.stdin && typeof p.stdin !== "number") {
        await writeChild(p.stdin, stdin, false); // a broken pipe shows in the exit status and stderr
        await endChild(p.stdin);
      }
      const [stdout, stderr, code] = await Promise.all([
        new Response(p.stdout as ReadableStream).text(),
        new Response(p.stderr as ReadableStream).text(),
        p.exited,
      ]);
      return { code, stdout, stderr };
    } finally {
      clearTimeout(timer);
    }
  };
}

/** Where a program is on PATH (and the sbin directories), or null. */
export const which = (prog: string): string | null =>
  Bun.which(prog, { PATH: `${process.env.PATH ?? ""}:/usr/sbin:/sbin:/usr/local/sbin` });

/** Whether a program is on PATH (the agent may run where nftables or iptables is not installed). */
export const have = (prog: string): boolean => which(prog) !== null;
