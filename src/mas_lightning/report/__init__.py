"""What a run leaves for people to read: summary.json, metrics.csv, affinity files, loggers, tables, plots.

Reporting reads the results of the federated layer and the methods; neither of them imports it back.
"""
