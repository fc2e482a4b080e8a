"""The node's live dashboards: time series kept in a bounded ring (``series``), the read-only view that the
web page at ``/`` and ``hyperion-node top`` draw (``view``), and the component that samples both (``service``)."""
