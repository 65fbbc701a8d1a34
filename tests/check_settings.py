#!/usr/bin/env python3
"""check_settings.py SPLITSERVE README.md — the README's flag table is the settings table, and
its model key table is the registry's key table.

Every setting is one row of src/core/settings.c; `splitserve --help` and
`splitserve --help-markdown` print it. This check fails when the README's table (between the
markers `<!-- flags:begin -->` and `<!-- flags:end -->`) differs from what the binary prints,
and shows the difference. Regenerate the README's tables with scripts/readme_flags.sh.
It also checks that `--help` names every flag of the table (both come from the same rows).
The model key table (between `<!-- model-keys:begin -->` and `<!-- model-keys:end -->`) must be
what `splitserve --help-model-keys` prints: every spec key is one row of src/models/registry.c.
"""
import difflib
import re
import subprocess
import sys


def run(binary, flag):
    return subprocess.run([binary, flag], check=True, capture_output=True, text=True).stdout


def same_table(text, mark, printed, flag):
    """Is the README's section between the mark's markers what `splitserve FLAG` printed?"""
    m = re.search(r"<!-- %s:begin -->\n(.*?)<!-- %s:end -->" % (mark, mark), text, re.S)
    if not m:
        print("README has no <!-- %s:begin --> ... <!-- %s:end --> section" % (mark, mark))
        return False
    if m.group(1) == printed:
        return True
    print("README's %s table differs from `splitserve %s` (run scripts/readme_flags.sh):"
          % (mark, flag))
    sys.stdout.writelines(difflib.unified_diff(m.group(1).splitlines(True),
                                               printed.splitlines(True), "README.md", flag))
    return False


def main(binary, readme):
    table, keys = run(binary, "--help-markdown"), run(binary, "--help-model-keys")
    helptext = run(binary, "--help")
    with open(readme) as f:
        text = f.read()
    ok = same_table(text, "flags", table, "--help-markdown")
    ok = same_table(text, "model-keys", keys, "--help-model-keys") and ok
    flags = re.findall(r"^\| `(--[a-z0-9-]+)", table, re.M)
    missing = [f for f in flags if not re.search(r"^\s+%s\b" % re.escape(f), helptext, re.M)]
    if missing:
        ok = False
        print("--help does not list: %s" % ", ".join(missing))
    nkeys = len(re.findall(r"^\| `[a-z0-9_]+` \|", keys, re.M))
    print("%d settings, %d model keys; README tables %s" % (len(flags), nkeys,
                                                            "match" if ok else "DIFFER"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
