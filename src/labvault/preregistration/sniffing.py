"""What an uploaded document really is, decided from its bytes only.

The file name and the client's content type are never read: an attacker chooses both. A
document is accepted when its magic bytes say PDF, JPEG or PNG *and* a real parser of that
format (pypdf, Pillow) reads it whole, with nothing before the signature and nothing after
the format's end marker (no polyglot made of a valid file with an HTML page appended).

PDFs that can act when opened are refused: JavaScript, launch and form-submission actions,
additional actions (``/AA``), embedded files, XFA forms and rich media, found by walking the
parsed object graph (so names hidden in compressed object streams or written with ``#xx``
escapes are seen too). Encrypted PDFs are refused (the lab could not read them anyway).

Every failure is a :class:`DocumentRejectedError` with a French message for the patient and a
stable ``reason`` code; no parser exception escapes, whatever the bytes.
"""

from __future__ import annotations

import enum
import io
import logging
from typing import Final

__all__ = [
    "MAX_IMAGE_PIXELS",
    "MAX_PDF_PAGES",
    "DocumentRejectedError",
    "MediaType",
    "RejectionReason",
    "sniff",
]

MAX_PDF_PAGES: Final = 50
MAX_PDF_OBJECTS: Final = 20_000
MAX_IMAGE_PIXELS: Final = 40_000_000
"""A phone photo is 12-50 MP; more than this is refused before it is decoded (memory bomb)."""

PDF_MAGIC: Final = b"%PDF-"
JPEG_MAGIC: Final = b"\xff\xd8\xff"
JPEG_END: Final = b"\xff\xd9"
PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
PNG_END: Final = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_MARKUP: Final = (b"<html", b"<script", b"<!doctype", b"<body", b"<iframe", b"<svg")

# PDF keys and action types that make a document do something when opened or clicked.
_ACTIVE_KEYS: Final = frozenset(
    {"/JS", "/JavaScript", "/AA", "/Launch", "/EmbeddedFile", "/EmbeddedFiles", "/XFA"}
    | {"/RichMedia", "/RichMediaContent"}
)
_ACTIVE_ACTIONS: Final = frozenset(
    {"/JavaScript", "/Launch", "/SubmitForm", "/ImportData", "/GoToE", "/GoToR", "/Rendition"}
    | {"/Movie", "/Sound", "/RichMediaExecute"}
)

# pypdf reports what it repairs through logging; its messages are about structure, but a
# hostile file should not be able to fill the logs.
logging.getLogger("pypdf").setLevel(logging.ERROR)


class MediaType(enum.StrEnum):
    PDF = "application/pdf"
    JPEG = "image/jpeg"
    PNG = "image/png"


class RejectionReason(enum.StrEnum):
    EMPTY = "empty"
    UNSUPPORTED = "unsupported-type"
    MARKUP = "markup"
    DAMAGED = "damaged"
    TRAILING_DATA = "trailing-data"
    ACTIVE_CONTENT = "active-content"
    ENCRYPTED = "encrypted"
    TOO_COMPLEX = "too-complex"


_MESSAGES: Final[dict[RejectionReason, str]] = {
    RejectionReason.EMPTY: "Le fichier est vide.",
    RejectionReason.UNSUPPORTED: (
        "Ce fichier n'est ni un PDF, ni une image JPEG, ni une image PNG. Envoyez une photo "
        "ou un scan de votre ordonnance dans l'un de ces formats."
    ),
    RejectionReason.MARKUP: (
        "Ce fichier contient une page web, pas une ordonnance : il est refusé."
    ),
    RejectionReason.DAMAGED: (
        "Ce fichier est endommagé ou incomplet : il n'a pas pu être lu. Enregistrez-le à "
        "nouveau ou prenez une nouvelle photo."
    ),
    RejectionReason.TRAILING_DATA: (
        "Ce fichier contient des données en trop après la fin du document : il est refusé. "
        "Enregistrez-le à nouveau ou prenez une nouvelle photo."
    ),
    RejectionReason.ACTIVE_CONTENT: (
        "Ce PDF contient du code ou des actions automatiques (JavaScript, lancement de "
        "programme, fichier joint) : il est refusé. Imprimez-le en PDF ou envoyez une photo."
    ),
    RejectionReason.ENCRYPTED: (
        "Ce PDF est protégé par un mot de passe : le laboratoire ne pourrait pas le lire. "
        "Envoyez une version sans mot de passe ou une photo."
    ),
    RejectionReason.TOO_COMPLEX: (
        f"Ce document est trop volumineux pour une ordonnance (plus de {MAX_PDF_PAGES} pages "
        "ou une image trop grande)."
    ),
}


class DocumentRejectedError(ValueError):
    """The bytes are not an acceptable document; ``str()`` is the French reason."""

    def __init__(self, reason: RejectionReason) -> None:
        self.reason = reason
        super().__init__(_MESSAGES[reason])


def sniff(content: bytes) -> MediaType:
    """The document's media type, from its content; raises :class:`DocumentRejectedError`."""
    if not content:
        raise DocumentRejectedError(RejectionReason.EMPTY)
    if any(tag in content[:1024].lower() for tag in _MARKUP):
        raise DocumentRejectedError(RejectionReason.MARKUP)
    try:
        if content.startswith(PDF_MAGIC):
            _check_pdf(content)
            return MediaType.PDF
        if content.startswith(PNG_MAGIC):
            if not content.endswith(PNG_END):
                raise DocumentRejectedError(RejectionReason.TRAILING_DATA)
            _check_image(content, "PNG")
            return MediaType.PNG
        if content.startswith(JPEG_MAGIC):
            if not content.endswith(JPEG_END):
                raise DocumentRejectedError(RejectionReason.TRAILING_DATA)
            _check_image(content, "JPEG")
            return MediaType.JPEG
    except DocumentRejectedError:
        raise
    except RecursionError:
        raise DocumentRejectedError(RejectionReason.TOO_COMPLEX) from None
    except Exception:  # any parser failure on hostile bytes is "damaged"
        raise DocumentRejectedError(RejectionReason.DAMAGED) from None
    raise DocumentRejectedError(RejectionReason.UNSUPPORTED)


def _check_image(content: bytes, expected: str) -> None:
    from PIL import Image

    # The size is read from the header and checked before anything is decoded (Pillow's
    # own bomb check is far higher). No warnings filter here: it is process-wide state.
    with Image.open(io.BytesIO(content), formats=[expected]) as image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise DocumentRejectedError(RejectionReason.DAMAGED)
        if width * height > MAX_IMAGE_PIXELS:
            raise DocumentRejectedError(RejectionReason.TOO_COMPLEX)
        image.verify()  # structure and checksums (PNG CRCs)
    # verify() leaves the image unusable: decode it whole from a fresh parse.
    with Image.open(io.BytesIO(content), formats=[expected]) as image:
        image.load()


def _check_pdf(content: bytes) -> None:
    from pypdf import PdfReader

    # A PDF ends with %%EOF (and perhaps a line end): anything further is appended data.
    tail = content[-1024:].rstrip(b"\r\n\x00 \t")
    if not tail.endswith(b"%%EOF"):
        raise DocumentRejectedError(RejectionReason.TRAILING_DATA)
    reader = PdfReader(io.BytesIO(content), strict=False)
    if reader.is_encrypted:
        raise DocumentRejectedError(RejectionReason.ENCRYPTED)
    count = len(reader.pages)
    if count == 0:
        raise DocumentRejectedError(RejectionReason.DAMAGED)
    if count > MAX_PDF_PAGES:
        raise DocumentRejectedError(RejectionReason.TOO_COMPLEX)
    for page in reader.pages:
        box = page.mediabox
        if box.width <= 0 or box.height <= 0:
            raise DocumentRejectedError(RejectionReason.DAMAGED)
    _refuse_active_content(reader.trailer)


def _refuse_active_content(root: object) -> None:
    """Walk the object graph from the trailer (each indirect object once)."""
    from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, NameObject

    seen: set[tuple[int, int]] = set()
    stack: list[object] = [root]
    visited = 0
    while stack:
        node = stack.pop()
        if isinstance(node, IndirectObject):
            ref = (node.idnum, node.generation)
            if ref in seen:
                continue
            seen.add(ref)
            node = node.get_object()
        visited += 1
        if visited > MAX_PDF_OBJECTS:
            raise DocumentRejectedError(RejectionReason.TOO_COMPLEX)
        if isinstance(node, DictionaryObject):
            for key, value in node.items():
                if str(key) in _ACTIVE_KEYS:
                    raise DocumentRejectedError(RejectionReason.ACTIVE_CONTENT)
                if (
                    str(key) == "/S"
                    and isinstance(value, NameObject)
                    and str(value) in _ACTIVE_ACTIONS
                ):
                    raise DocumentRejectedError(RejectionReason.ACTIVE_CONTENT)
                if str(key) != "/Parent":  # pages point back up; the walk goes down only
                    stack.append(value)
        elif isinstance(node, ArrayObject):
            stack.extend(node)
