"""mergekit-yaml's options on our commands (``merge``, ``organ apply``), with its shard-size syntax as a usage error.

``add_merge_options`` gives every option of ``mergekit-yaml`` (so the two
commands take the same flags); its ``--out-shard-size`` type lets a bad value
escape as a ``ValueError``, which our CLI would report as a bug (exit 1).
"""

from __future__ import annotations

import click
from mergekit.options import add_merge_options


class ShardSize(click.ParamType):
    """mergekit's shard-size syntax (``mergekit.common.parse_kmb``: ``5B``, ``500M``, ``100K``, ``1000``).

    mergekit's own ``ShardSizeParamType`` lets a bad value escape as a
    ValueError (a traceback); this one makes it a usage error (exit 2).
    """

    name = "size"

    def convert(self, value, param, ctx):
        from mergekit.common import parse_kmb

        if isinstance(value, int):
            size = value
        else:
            try:
                size = parse_kmb(str(value).strip())
            except (ValueError, IndexError):
                self.fail(f"{value!r} is not a size: a number, optionally followed by K, M or B "
                          "(10^3, 10^6, 10^9), as mergekit-yaml's --out-shard-size", param, ctx)
        if size <= 0:
            self.fail("must be positive", param, ctx)
        return size


def mergekit_options(f):
    """``add_merge_options``, with ``--out-shard-size`` parsed by ``ShardSize`` (a bad size exits 2)."""
    f = add_merge_options(f)
    for param in getattr(f, "__click_params__", []):
        if param.name == "out_shard_size":
            param.type = ShardSize()
    return f
