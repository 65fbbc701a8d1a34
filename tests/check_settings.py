#!/usr/bin/env python3
"""check_settings.py SPLITSERVE README.md — the README's flag table is the settings table.

Every setting is one row of src/core/settings.c; `splitserve --help` and
`splitserve --help-markdown` print it. This check fails when the README's table (between the
markers `<!-- flags:begin -->` and `<!-- flags:end -->`) differs from what the binary prints,
and shows the difference. Regenerate the README's table with scripts/readme_flags.sh.
It also checks that `--help` names every flag of the table (both come from the same rows).
"""
import difflib
import re
import subprocess
import sys


def main(binary, readme):
    table = subprocess.run([binary, "--help-markdown"], check=True, capture_output=True,
                           text=True).stdout
    helptext = subprocess.run([binary, "--help"], check=True, capture_output=True,
                              text=True).stdout
    with open(readme) as f:
        text = f.read()
    m = re.search(r"<!-- flags:begin -->\n(.*?)<!-- flags:end -->", text, re.S)
    if not m:
        print("README has no <!-- flags:begin --> ... <!-- flags:end --> section")
        return 1
    ok = True
    if m.group(1) != table:
        ok = False
        print("README's flag table differs from `splitserve --help-markdown` "
              "(run scripts/readme_flags.sh):")
        sys.stdout.writelines(difflib.unified_diff(m.group(1).splitlines(True),
                                                   table.splitlines(True), "README.md",
                                                   "--help-markdown"))
    flags = re.findall(r"^\| `(--[a-z0-9-]+)", table, re.M)
    missing = [f for f in flags if not re.search(r"^\s+%s\b" % re.escape(f), helptext, re.M)]
    if missing:
        ok = False
        print("--help does not list: %s" % ", ".join(missing))
    print("%d settings; README table %s" % (len(flags), "matches" if ok else "DIFFERS"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
