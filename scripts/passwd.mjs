#!/usr/bin/env node
// Prints an AUTH_USERS line (`name:$2b$…`, bcrypt, as `htpasswd -nB name` does) for a user.
//
//   npm run passwd -- NAME            asks for the password (not echoed)
//   echo PASSWORD | npm run passwd -- NAME --stdin
//   npm run passwd -- NAME --cost 12  bcrypt cost (default 10; each +1 doubles the time
//                                     a check takes, on the Worker too)
import bcrypt from "bcryptjs";
import { createInterface } from "node:readline";

const args = process.argv.slice(2);
const costIndex = args.indexOf("--cost");
const cost = costIndex >= 0 ? Number(args[costIndex + 1]) : 10;
const name = args.find((arg, index) => !arg.startsWith("--") && (costIndex < 0 || index !== costIndex + 1));
if (!name || name.includes(":") || /\s/.test(name) || !Number.isInteger(cost) || cost < 4 || cost > 15) {
  console.error("usage: npm run passwd -- NAME [--stdin] [--cost 4..15]");
  process.exit(2);
}

async function readPassword() {
  if (args.includes("--stdin") || !process.stdin.isTTY) {
    let text = "";
    for await (const chunk of process.stdin) text += chunk;
    return text.replace(/\r?\n$/, "");
  }
  const prompt = createInterface({ input: process.stdin, output: process.stderr, terminal: true });
  // Do not echo what is typed.
  prompt._writeToOutput = () => undefined;
  process.stderr.write(`password for ${name}: `);
  const answer = await new Promise((resolve) => prompt.question("", resolve));
  prompt.close();
  process.stderr.write("\n");
  return answer;
}

const password = await readPassword();
if (password === "") {
  console.error("passwd: empty password");
  process.exit(2);
}
console.log(`${name}:${bcrypt.hashSync(password, cost)}`);
