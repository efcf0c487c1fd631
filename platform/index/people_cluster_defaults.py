"""Defaults of people clustering (``index cluster``), in a module that imports nothing: the
command-line parser shows them without loading numpy, pyarrow or FAISS.

:mod:`.people_clusters` uses these values; :data:`ALGORITHMS` names its registered clusterers
(``people_clusters.CLUSTERERS``, checked equal by the tests).
"""

from __future__ import annotations

#: Squared L2 distance under which two faces may be linked; stricter than the verification
#: threshold (1.1) because a wrong link merges two people (chosen on LFW, bench_people_clusters.py).
DEFAULT_MAX_DISTANCE = 0.7
#: smallest cluster kept; smaller groups stay unassigned
DEFAULT_MIN_FACES = 2
#: k of the k-NN graph
DEFAULT_NEIGHBORS = 16
DEFAULT_ALGORITHM = "chinese-whispers"
#: faces per contact sheet
DEFAULT_MAX_THUMBNAILS = 36
#: the clusterers' names, as registered in :data:`.people_clusters.CLUSTERERS`
ALGORITHMS = ("chinese-whispers", "components", "dbscan")
