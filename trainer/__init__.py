"""The trainer: ratings -> corpus -> embeddings -> artifact directory (README's Layout lists
its modules).

OpenMP threads (torch's intra-op pool) wait for each other by sleeping, not spinning, unless
OMP_WAIT_POLICY says otherwise. A spinning thread burns the time slice its sibling needs as
soon as anything else runs on the machine: the shared split's 5 epochs took 9.5 s instead of
0.9 s beside other jobs, and 48 s instead of 2.7 s with one more process busy on a core.
Set here, before any trainer module imports torch: OpenMP reads it once, when torch loads.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
