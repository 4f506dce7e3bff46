"""The SCSI layer: decode CDBs and run SPC-4/SBC-3 commands against a ``BlockDevice``.

It knows nothing of iSCSI or replication: the iSCSI layer hands it a LUN, a CDB, the
data-out buffer and the I_T nexus, and gets a ``ScsiResult`` back.
"""

from .common import Nexus, ScsiResult
from .constants import SenseKey, Status
from .lun import LogicalUnit
from .target import ScsiTarget, flush_failed_result

__all__ = [
    "LogicalUnit",
    "Nexus",
    "ScsiResult",
    "ScsiTarget",
    "SenseKey",
    "Status",
    "flush_failed_result",
]
