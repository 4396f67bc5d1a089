/** Finding and running the command-line validators the operations tests rely on. */
import { execa } from "execa";
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";

/** The absolute path of `name` on PATH, or undefined. */
export function which(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Which Debian package provides each tool, for skip messages and CI setup. */
export const DEBIAN_PACKAGE: Record<string, string> = {
  promtool: "prometheus",
  prometheus: "prometheus",
  "docker-compose": "docker-compose",
  "systemd-analyze": "systemd",
  "nats-server": "nats-server",
};

/** A reason to skip when `tool` is missing (node:test prints it), or false when it is there. */
export function missing(tool: string): string | false {
  if (which(tool)) return false;
  const pkg = DEBIAN_PACKAGE[tool];
  return `${tool} is not installed${pkg ? ` (Debian package ${pkg}: apt-get install -y ${pkg})` : ""}`;
}

/** Runs a command, never throwing on a non-zero exit; stdout and stderr are returned together. */
export async function run(file: string, args: string[], cwd?: string): Promise<{ exitCode: number; output: string }> {
  const r = await execa(file, args, { cwd, reject: false, all: true, stdin: "ignore" });
  return { exitCode: r.exitCode ?? -1, output: r.all ?? "" };
}
