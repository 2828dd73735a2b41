"""The PEP 517 build backend of tre_client, in the standard library alone.

It builds a pure-Python wheel of the tre_client package (and an sdist, and
an editable wheel for ``pip install -e``), so installing the client needs no
download: no setuptools, no wheel package, no network. The project's
metadata is here, its version in tre_client/__init__.py (__version__).
"""

import base64
import hashlib
import io
import os
import re
import tarfile
import time
import zipfile

NAME = "tre_client"
SUMMARY = "Client for the tre query broker: submit aggregate SQL, follow its review, read released results"
REQUIRES_PYTHON = ">=3.8"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, NAME)
# Files of the sdist besides the package: what this backend needs to build
# the wheel again, and the package's tests.
SDIST_EXTRA = ("pyproject.toml", "README.md", os.path.join("_build", "backend.py"))
SDIST_DIRS = ("tests",)


def _version():
    with open(os.path.join(PACKAGE, "__init__.py"), encoding="utf-8") as f:
        m = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M)
    if not m:
        raise RuntimeError("tre_client/__init__.py has no __version__")
    return m.group(1)


def _metadata():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    return (
        "Metadata-Version: 2.1\n"
        "Name: {}\nVersion: {}\nSummary: {}\nRequires-Python: {}\n"
        "Provides-Extra: pandas\nRequires-Dist: pandas; extra == \"pandas\"\n"
        "Description-Content-Type: text/markdown\n\n{}"
    ).format(NAME, _version(), SUMMARY, REQUIRES_PYTHON, readme)


def _dist_info():
    return "{}-{}.dist-info".format(NAME, _version())


def _wheel_file():
    return "Wheel-Version: 1.0\nGenerator: tre_client-backend\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


def _package_files():
    """The package's source files, relative to ROOT, in a stable order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(PACKAGE):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for fn in sorted(filenames):
            if fn.endswith(".py") or fn == "py.typed":
                out.append(os.path.relpath(os.path.join(dirpath, fn), ROOT))
    return out


def _write_wheel(wheel_directory, files):
    """Writes a wheel holding files ({archive name: bytes}) and the
    dist-info, and returns its file name."""
    name = "{}-{}-py3-none-any.whl".format(NAME, _version())
    info = _dist_info()
    files = dict(files)
    files[info + "/METADATA"] = _metadata().encode("utf-8")
    files[info + "/WHEEL"] = _wheel_file().encode("utf-8")
    record = []
    for arc, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")
        record.append("{},sha256={},{}".format(arc, digest, len(data)))
    record.append(info + "/RECORD,,")
    files[info + "/RECORD"] = ("\n".join(record) + "\n").encode("utf-8")
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w", zipfile.ZIP_DEFLATED) as zf:
        for arc, data in files.items():
            zi = zipfile.ZipInfo(arc, date_time=(1980, 1, 1, 0, 0, 0))
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    return name


def _read(rel):
    with open(os.path.join(ROOT, rel), "rb") as f:
        return f.read()


# ---- PEP 517 hooks ----

def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    info = os.path.join(metadata_directory, _dist_info())
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w", encoding="utf-8") as f:
        f.write(_metadata())
    with open(os.path.join(info, "WHEEL"), "w", encoding="utf-8") as f:
        f.write(_wheel_file())
    return _dist_info()


prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _write_wheel(wheel_directory, {rel.replace(os.sep, "/"): _read(rel) for rel in _package_files()})


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    # A .pth file puts the source directory on sys.path: edits take effect
    # without reinstalling.
    return _write_wheel(wheel_directory, {NAME + "_editable.pth": (ROOT + "\n").encode("utf-8")})


def build_sdist(sdist_directory, config_settings=None):
    base = "{}-{}".format(NAME, _version())
    name = base + ".tar.gz"
    rels = list(_package_files()) + list(SDIST_EXTRA)
    for d in SDIST_DIRS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, d)):
            dirnames[:] = sorted(x for x in dirnames if x != "__pycache__")
            rels += [os.path.relpath(os.path.join(dirpath, fn), ROOT) for fn in sorted(filenames) if fn.endswith(".py")]
    pkg_info = _metadata().encode("utf-8")
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz", format=tarfile.PAX_FORMAT) as tf:
        def add(arc, data):
            ti = tarfile.TarInfo(base + "/" + arc)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, int(time.time())
            tf.addfile(ti, io.BytesIO(data))
        add("PKG-INFO", pkg_info)
        for rel in rels:
            add(rel.replace(os.sep, "/"), _read(rel))
    return name
