"""The PubMedVision image zips, each opened only when the sample needs it: placed ones first.

Looking an image up (``basename in zips``) opens zips until one holds it: first
those placed in the dataset folder, then the others in list order, each read in
place by HTTP range requests (:class:`~medtune.data.rangefile.HTTPRangeFile`) or,
with ``full_download``, downloaded whole into the dataset folder, where the next
run finds it placed. So a sample whose images lie in the placed zips needs no
network, and a zip the sample never reaches is never fetched. A record whose image
is in no zip makes every zip open once (that is how it is known to be missing).
A name in several zips is read from the first opened that holds it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from medtune.data.archives import read_zip_member
from medtune.data.convert import ImageRef
from medtune.data.download import download
from medtune.data.http import DownloadError
from medtune.data.rangefile import HTTPRangeFile, RangeNotSupported
from medtune.data.store import DatasetError

log = logging.getLogger(__name__)


class ImageZips:
    def __init__(
        self,
        stack: contextlib.ExitStack,
        names: Sequence[str],
        folder: Path,
        url_of: Callable[[str], str],
        *,
        full_download: bool = False,
        config_key: str = "the dataset",
    ):
        self.stack, self.folder, self.url_of = stack, Path(folder), url_of
        self.full_download, self.config_key = full_download, config_key
        placed = [name for name in names if (self.folder / name).is_file()]
        self.pending = placed + [name for name in names if name not in placed]
        self.names = list(names)
        self.opened: dict[str, zipfile.ZipFile] = {}
        self.how: dict[str, str] = {}  # zip name -> placed / range requests / downloaded
        self.index: dict[str, tuple[str, str]] = {}  # image basename -> (zip name, member)
        self.repeated = 0

    def __contains__(self, basename: object) -> bool:
        if not isinstance(basename, str):
            return False
        while basename not in self.index and self.pending:
            self._open(self.pending.pop(0))
        return basename in self.index

    def image(self, basename: str) -> ImageRef:
        """The image named ``basename`` (found before with ``in``), read from its open zip."""
        zip_name, member = self.index[basename]
        return ImageRef(f"{zip_name}:{member}", functools.partial(read_zip_member, self.opened[zip_name], member))

    def _open(self, name: str) -> None:
        source, where = self._source(name)
        try:
            zf = self.stack.enter_context(zipfile.ZipFile(source))
        except (zipfile.BadZipFile, OSError) as exc:
            raise DatasetError(f"{where}: not a readable zip archive ({exc})") from None
        self.opened[name] = zf
        for info in zf.infolist():
            if info.is_dir():
                continue
            base = PurePosixPath(info.filename).name
            if base in self.index:
                self.repeated += 1
            else:
                self.index[base] = (name, info.filename)

    def _source(self, name: str):
        """(file or file-like, description) of zip ``name``: placed, fetched by range requests, or downloaded."""
        placed = self.folder / name
        if placed.is_file():
            self.how[name] = "placed"
            return placed, str(placed)
        url = self.url_of(name)
        try:
            if self.full_download:
                self.how[name] = "downloaded"
                return download(url, placed), url
            self.how[name] = "range requests"
            return self.stack.enter_context(HTTPRangeFile(url)), url
        except RangeNotSupported as exc:
            raise DownloadError(
                f"{exc}; set full_download: true under {self.config_key} to download whole zips, "
                f"or place {name} in {self.folder}/"
            ) from None
        except DownloadError as exc:
            raise DownloadError(
                f"PubMedVision: {name} is not in {self.folder}/ and cannot be fetched ({exc}); place it there, "
                f"or list only the zips you have under zips: in {self.config_key}"
            ) from None

    def report(self) -> None:
        """Log which zips were opened and how, and the range-request traffic."""
        unopened = len(self.names) - len(self.opened)
        by_how: dict[str, list[str]] = {}
        for name in self.opened:
            by_how.setdefault(self.how[name], []).append(name)
        how = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in sorted(by_how.items())) or "none"
        log.info("PubMedVision: opened %d of %d zips (%s); %d not needed", len(self.opened), len(self.names), how,
                 unopened)
        remote = [zf.fp for zf in self.opened.values() if isinstance(getattr(zf, "fp", None), HTTPRangeFile)]
        if remote:
            log.info("PubMedVision: %d range requests, %.1f MB fetched from %d zips",
                     sum(f.requests for f in remote), sum(f.bytes_fetched for f in remote) / 1e6, len(remote))
        if self.repeated:
            log.warning("PubMedVision: %d image names occur in more than one zip; using the first opened",
                        self.repeated)
