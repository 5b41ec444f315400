"""What a compile writes for people and CI: report.json / report.md / manifest.json and the printed
table (contract.py), the HTML page (html_page.py), and what the benchmark scripts share
(benchmarks.py). Reads results, never runtimes.
"""
