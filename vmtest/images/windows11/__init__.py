r"""Build the Windows 11 golden image: an unattended install from the user's ISO, provisioned, sealed.

:func:`plan_windows_image` decides everything first (paths, the answer ISO's contents, the QEMU command,
the deadlines) and creates the build's run directory; ``--dry-run`` prints that plan and stops.
:func:`build_windows_image` then:

1. renders ``images/windows11/autounattend.xml.in`` (values escaped by the XML serializer) and builds
   the answer ISO with xorriso (or genisoimage): ``Autounattend.xml``, the provisioning scripts, their
   ``settings.json``, the user's Win32-OpenSSH zip and tools. It holds the password (base64 UTF-16, not
   encryption), so it is created 0600 in the run directory and deleted when the build ends;
2. creates a blank qcow2 and boots the installer (:class:`Windows11InstallerProfile`: the Windows
   profile plus both CD-ROMs) through vmtest's :class:`Machine`, pressing Enter over QMP during the
   first minute to get past "Press any key to boot from CD or DVD" (windows11-vm.md §2.2);
3. follows Setup and provisioning through the markers the guest prints on COM2 (see
   ``images/windows11/README.md``) and a screenshot every minute (and at each marker), within one
   overall deadline;
4. after ``VMTEST-PROVISION-DONE`` waits for the guest to power off, commits the install into the
   disk, keeps the UEFI variable store (it holds Windows' boot entry) and writes ``image.json``: what
   was configured (never the password), the SSH host key, the build time, sha256 of the disk, the
   evaluation licence's start and expiry.

An image lives in ``<cache_root>/windows11/<name>/`` (``current`` points at the newest) unless
``--output`` names its folder. The work happens in ``.build-<name>`` next to it, renamed into place
at the end, so a half-built image is never taken for one.

Modules, bottom up (each imports only those above it):

* :mod:`~vmtest.images.windows11.markers`: the markers the guest prints on COM2, :class:`ProvisionLog`;
* :mod:`~vmtest.images.windows11.image`: :class:`WindowsImage`, its ``image.json``,
  :func:`find_windows_image`;
* :mod:`~vmtest.images.windows11.answer`: :class:`AnswerSettings`, :func:`render_answer_file`, and
  :func:`windows_files_dir` (the template and scripts);
* :mod:`~vmtest.images.windows11.options`: :class:`WindowsImageOptions`, what the user asked for;
* :mod:`~vmtest.images.windows11.host`: the host's tools: what is missing, the ISO writer, running one;
* :mod:`~vmtest.images.windows11.plan`: :func:`plan_windows_image` and :class:`WindowsImagePlan`;
* :mod:`~vmtest.images.windows11.answer_iso`: :func:`build_answer_iso` and :func:`guest_settings`;
* :mod:`~vmtest.images.windows11.install`: the installer under QEMU (steps 2 and 3) and its watchers;
* :mod:`~vmtest.images.windows11.seal`: step 4, the commit and ``image.json``;
* :mod:`~vmtest.images.windows11.build`: :func:`build_windows_image`, all of it in order;
* :mod:`~vmtest.images.windows11.command`: :func:`image_build_windows11_command`, the CLI's entry.
"""

from vmtest.images.manifest import MANIFEST_NAME
from vmtest.images.windows11.answer import (
    AnswerSettings,
    encode_password,
    render_answer_file,
    windows_files_dir,
)
from vmtest.images.windows11.answer_iso import build_answer_iso, guest_settings
from vmtest.images.windows11.build import build_windows_image
from vmtest.images.windows11.command import image_build_windows11_command
from vmtest.images.windows11.host import find_iso_tool
from vmtest.images.windows11.image import WindowsImage, find_windows_image, resolve_windows_image
from vmtest.images.windows11.markers import MARKERS, Markers, ProvisionLog
from vmtest.images.windows11.options import WindowsImageOptions
from vmtest.images.windows11.plan import Deadlines, IsoEntry, WindowsImagePlan, plan_windows_image

__all__ = [  # noqa: RUF022 (by importance, not alphabetical)
    "WindowsImage",
    "find_windows_image",
    "resolve_windows_image",
    "MANIFEST_NAME",
    "WindowsImageOptions",
    "plan_windows_image",
    "WindowsImagePlan",
    "build_windows_image",
    "image_build_windows11_command",
    "Deadlines",
    "IsoEntry",
    "AnswerSettings",
    "render_answer_file",
    "encode_password",
    "windows_files_dir",
    "build_answer_iso",
    "guest_settings",
    "find_iso_tool",
    "ProvisionLog",
    "Markers",
    "MARKERS",
]
