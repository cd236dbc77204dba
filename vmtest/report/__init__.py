"""Reports people read: JUnit XML, GitHub job summaries and annotations, a self-contained HTML report."""
