"""Byte ranges of files on the Hugging Face Hub, through huggingface_hub's own HTTP session.

A transplant needs a few tensors of a donor that may be 140 GB. Everything
here reads exactly the bytes asked for with HTTP ``Range`` requests on the
Hub's ``resolve`` URL (``hf_hub_url``, ``build_hf_headers``, ``get_session``:
the client, token, endpoint and proxies the user configured), and checks that
the server sent exactly that many bytes.

Why not ``get_safetensors_metadata``: it always fetches the first 100 kB of
each file, which is more than a small header; ``read_header_bytes`` asks for
the 8-byte length, then for exactly the header. Why not ``HfFileSystem``: its
read-ahead cache fetches blocks around a range, and its streaming file cannot
seek.

Every failure becomes a ``TransplantError`` naming the model and what failed:
a missing repo, revision or file (exit 2), or a network fault (``HubNetworkError``,
exit 1). A short range is the server's fault and also exit 2.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

from mergekit_transplant.errors import TransplantError

#: bytes per streamed chunk of a range
CHUNK_BYTES = 8 * 1024 * 1024
#: seconds to wait for a server that stops answering
TIMEOUT_S = 60.0
MAX_HEADER_BYTES = 100 * 1024 * 1024


class HubError(TransplantError):
    """A Hub model could not be read: missing repo, revision or file, or a server sending the wrong bytes."""


class HubNetworkError(HubError):
    """The Hub (or the network to it) failed; not the user's input."""

    exit_code = 1


@dataclass(frozen=True)
class HubFile:
    """One file of one commit of a Hub model."""

    repo_id: str
    commit: str
    filename: str

    @property
    def ref(self) -> str:
        return f"{self.repo_id}@{self.commit[:12]}"

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.commit}/{self.filename}"


def _transport_error(error: BaseException) -> bool:
    names = {"TransportError", "ProtocolError", "RemoteProtocolError", "ReadError", "ConnectError",
             "TimeoutException", "ReadTimeout", "NetworkError", "ConnectionError", "IncompleteRead"}
    return isinstance(error, (ConnectionError, TimeoutError)) or any(c.__name__ in names for c in type(error).__mro__)


def hub_error(error: BaseException, model: str, what: str) -> TransplantError:
    """One line naming ``model`` and what failed, for any error a Hub call raised."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, TransplantError):
        return error if isinstance(error, HubError) else HubError(str(error))
    first = (str(error).strip().splitlines() or [""])[0].strip()
    if isinstance(error, GatedRepoError):
        return HubError(f"model {model}: gated on the Hub; accept its terms and log in (hf auth login)")
    if isinstance(error, RevisionNotFoundError):
        return HubError(f"model {model}: the revision does not exist on the Hub ({what})")
    if isinstance(error, RepositoryNotFoundError):
        return HubError(f"model {model}: no such model on the Hub, or it is private ({what})")
    if isinstance(error, EntryNotFoundError):
        return HubError(f"model {model}: a file is missing on the Hub ({what}: {first})")
    if isinstance(error, OfflineModeIsEnabled):
        return HubError(f"model {model}: HF_HUB_OFFLINE is set and {what} is not in the local cache")
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        cls = HubNetworkError if status is None or status >= 500 else HubError
        return cls(f"model {model}: the Hub refused {what} (HTTP {status}: {first})")
    if _transport_error(error):
        return HubNetworkError(f"model {model}: network fault during {what} ({type(error).__name__}: {first})")
    return HubError(f"model {model}: {what} failed ({type(error).__name__}: {first})")


def model_files(repo_id: str, revision: Optional[str]) -> Tuple[str, List[str]]:
    """The commit a revision points at, and the files of that commit (one model-info request)."""
    from huggingface_hub import HfApi

    model = f"{repo_id}@{revision}" if revision else repo_id
    try:
        info = HfApi().model_info(repo_id, revision=revision)
    except Exception as error:
        raise hub_error(error, model, f"reading the model info{f' at revision {revision!r}' if revision else ''}") from None
    if not info.sha:
        raise HubError(f"model {model}: the Hub gave no commit for this revision")
    return info.sha, sorted(s.rfilename for s in info.siblings or [])


def _url(file: HubFile) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(file.repo_id, file.filename, revision=file.commit)


def iter_range(file: HubFile, begin: int, end: int, *, what: str = "") -> Iterator[bytes]:
    """The bytes ``[begin, end)`` of ``file``, streamed in chunks; exactly that many or an error."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    if end <= begin:
        return
    what = what or f"bytes {begin}-{end - 1} of {file.filename}"
    headers = {**build_hf_headers(), "Range": f"bytes={begin}-{end - 1}", "Accept-Encoding": "identity"}
    received = 0
    try:
        with get_session().stream("GET", _url(file), headers=headers, timeout=TIMEOUT_S,
                                  follow_redirects=True) as response:
            hf_raise_for_status(response)
            if response.status_code != 206:
                raise HubError(
                    f"model {file.ref}: the server ignored the Range request for {what} "
                    f"(HTTP {response.status_code}); refusing to download the whole {file.filename}")
            for chunk in response.iter_bytes(CHUNK_BYTES):
                if received + len(chunk) > end - begin:
                    raise HubError(f"model {file.ref}: the server sent more than {what} asked for")
                received += len(chunk)
                yield chunk
    except TransplantError:
        raise
    except Exception as error:
        raise hub_error(error, file.ref, f"reading {what}") from None
    if received != end - begin:
        raise HubError(
            f"model {file.ref}: short read of {what}: the server sent {received:,} of {end - begin:,} bytes")


def read_range(file: HubFile, begin: int, end: int, *, what: str = "") -> bytes:
    return b"".join(iter_range(file, begin, end, what=what))


def read_header_bytes(file: HubFile) -> Tuple[int, bytes]:
    """A remote safetensors file's header: (data start offset, header JSON bytes), in two exact reads."""
    raw = read_range(file, 0, 8, what=f"the header length of {file.filename}")
    (n,) = struct.unpack("<Q", raw)
    if n > MAX_HEADER_BYTES:
        raise TransplantError(f"model {file.ref}: {file.filename} is not a valid safetensors file "
                              f"(header length {n} is implausible)")
    return 8 + n, read_range(file, 8, 8 + n, what=f"the header of {file.filename}")


_HEADERS: Dict[HubFile, Tuple[int, dict]] = {}


def _header_cache_file(file: HubFile):
    """Where a remote header is kept on disk: beside the hub cache, per commit (commits never change)."""
    from pathlib import Path

    from huggingface_hub import constants

    return (Path(constants.HF_HUB_CACHE).parent / "mergekit-transplant" / "headers"
            / file.repo_id.replace("/", "--") / file.commit / f"{file.filename}.json")


def cached_header(file: HubFile) -> Optional[Tuple[int, dict]]:
    """(data start, header) of ``file`` from this process or the disk cache; None when never read."""
    if file in _HEADERS:
        return _HEADERS[file]
    try:
        data = json.loads(_header_cache_file(file).read_text(encoding="utf-8"))
        start, header = int(data["data_start"]), data["header"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(header, dict):
        return None
    _HEADERS[file] = (start, header)
    return _HEADERS[file]


def remote_header(file: HubFile) -> Tuple[int, dict]:
    """(data start, parsed header) of a remote safetensors file; fetched once per commit, then cached on disk."""
    cached = cached_header(file)
    if cached is not None:
        return cached
    start, raw = read_header_bytes(file)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise TransplantError(f"model {file.ref}: {file.filename} is not a valid safetensors file ({error})") from None
    if not isinstance(header, dict):
        raise TransplantError(f"model {file.ref}: {file.filename} is not a valid safetensors file (header is not a table)")
    _HEADERS[file] = (start, header)
    try:  # a cache, never a reason to fail
        from mergekit_transplant import atomic

        path = _header_cache_file(file)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps({"data_start": start, "header": header}))
    except OSError:
        pass
    return start, header


def small_files(repo_id: str, commit: str, patterns: List[str], revision: Optional[str] = None) -> str:
    """The commit's small files (configs, index, tokenizer, card) in the cache; the snapshot folder.

    ``revision`` (a branch or tag that resolved to ``commit``) is recorded in
    the cache's ``refs/`` as huggingface_hub does, so offline reads find it.
    """
    from pathlib import Path

    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, revision=commit, allow_patterns=patterns)
    except Exception as error:
        raise hub_error(error, f"{repo_id}@{commit[:12]}", "downloading its config files") from None
    ref = revision or "main"
    if ref != commit:
        try:
            refs = Path(folder).parents[1] / "refs" / ref
            refs.parent.mkdir(parents=True, exist_ok=True)
            if not refs.is_file() or refs.read_text().strip() != commit:
                from mergekit_transplant import atomic

                atomic.write_text(refs, commit)
        except OSError:
            pass  # a cache, never a reason to fail
    return folder


__all__ = ["HubFile", "HubError", "HubNetworkError", "hub_error", "model_files", "iter_range", "read_range",
           "read_header_bytes", "remote_header", "cached_header", "small_files"]
