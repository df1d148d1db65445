"""CDLtvS / LtvS (cross-domain customer lifetime value): ``data`` builds per-customer series and
portraits per domain (``cdnow`` reads the CDNOW master file), ``encoders`` DeepFM and TCN,
``exmn`` the Expert Mask Network, ``losses`` eq. 7-17, ``train`` the two training stages,
``baselines`` the Table 1 baselines, ``config`` the run's settings and ``protocol`` the
experiment (cells, tuning, scoring) that ``dmeta run cdltvs`` runs."""
