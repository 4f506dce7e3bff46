"""Pack the wheels of a wheelhouse directory into one tar file, the same bytes for the same
wheels (sorted names, no times or owners), so that copying it to a host is one transfer and
changes nothing when the wheels are the same.  Run on the controller by the engine role:

    python wheelhouse_tar.py WHEELHOUSE_DIR OUT.tar

Prints ``written`` or ``same``; exit 2 when the directory holds no wheel."""

import io
import os
import sys
import tarfile


def main():
    src, out = sys.argv[1], sys.argv[2]
    names = sorted(n for n in os.listdir(src) if n.endswith(".whl"))
    if not names:
        print("no wheel in " + src)
        return 2
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in names:
            path = os.path.join(src, name)
            info = tar.gettarinfo(path, arcname=name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with open(path, "rb") as f:
                tar.addfile(info, f)
    data = buf.getvalue()
    try:
        with open(out, "rb") as f:
            same = f.read() == data
    except OSError:
        same = False
    if same:
        print("same")
        return 0
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, out)
    print("written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
