#!/usr/bin/env python3
"""cu2cpp.py IN.cu OUT.cpp - rewrite a plugin source (or .cuh header) for
the host emulator (cuda_emu.h): each kernel launch
`K<<<grid, block[, smem[, stream]]>>>(args);` becomes
`mnc_emu::launch("K", dim3(grid), dim3(block), smem, stream,
mnc_emu::bind_args(K, args));`, the dynamic shared memory declaration becomes
a pointer to the emulated block's buffer, __noinline__ the GNU attribute, and
`#pragma unroll` lines are emptied. A launch must start its own line (or
the kernel's name end the line before a line that starts with `<<<`).

The arguments are evaluated and copied at the launch, as CUDA does: the
launch only queues the kernel on its stream, which runs it later on its own
thread, after the caller's locals may have changed or gone."""
import re
import sys


def split_top(s):
    """Split on commas outside parentheses / angle-free brackets."""
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def convert(src):
    # CUDA's unroll hints mean nothing to the host compiler, which would
    # warn about an unknown pragma: dropped, the line left empty (#line).
    src = re.sub(r"^[ \t]*#[ \t]*pragma[ \t]+unroll\b.*$", "", src,
                 flags=re.M)
    src = src.replace("__noinline__", "__attribute__((noinline))")
    src = re.sub(r"extern\s+__shared__\s+__align__\(\d+\)\s+unsigned char\s+"
                 r"(\w+)\[\];",
                 r"unsigned char *\1 = mnc_emu::dyn_smem();", src)
    out, i = [], 0
    while True:
        j = src.find("<<<", i)
        if j < 0:
            out.append(src[i:])
            break
        line_start = src.rfind("\n", 0, j) + 1
        if not src[line_start:j].strip():
            # `K<...>` on the line above, as clang-format breaks a long
            # launch of a template kernel
            line_start = src.rfind("\n", 0, line_start - 1) + 1
        indent = re.match(r"\s*", src[line_start:]).group(0)
        kstart = line_start + len(indent)
        kernel = src[kstart:j].strip()
        k = src.find(">>>", j)
        cfg = split_top(src[j + 3:k])
        while len(cfg) < 4:
            cfg.append("0")
        p = k + 3
        while src[p] != "(":
            p += 1
        depth, q = 0, p
        while True:
            if src[q] == "(":
                depth += 1
            elif src[q] == ")":
                depth -= 1
                if depth == 0:
                    break
            q += 1
        args = src[p + 1:q]
        out.append(src[i:kstart])
        bound = kernel + (", " + args if args.strip() else "")
        # the line breaks before the arguments stay, for #line's numbers
        breaks = "\n" * src.count("\n", kstart, k)
        out.append("mnc_emu::launch(\"%s\",%s dim3(%s), dim3(%s), "
                   "(size_t)(%s), %s, mnc_emu::bind_args(%s))"
                   % (" ".join(kernel.split()).replace('"', '\\"'), breaks,
                      cfg[0], cfg[1], cfg[2], cfg[3], bound))
        i = q + 1
    return "".join(out)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        text = f.read()
    with open(sys.argv[2], "w") as f:
        f.write('#line 1 "%s"\n' % sys.argv[1])
        f.write(convert(text))
