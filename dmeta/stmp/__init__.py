"""STMP: spatio-temporal meta-learning for festival purchase prediction (Qin et al., AAAI 2021).

``data`` builds region x day panels with date types, ``model`` holds the amortization
network, temporal feature extractors and generative head, ``train`` the ML-PIP objective
with alternating spatial / temporal views. ``config`` is the run's nested config,
``baselines`` the paper's baselines and ``protocol`` the experiment (splits, methods,
equal tuning, scoring) that ``dmeta run stmp`` wires up.
"""
