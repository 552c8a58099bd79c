import numpy as np

from genrec import ids, sequences
from genrec.benchmarks import id_quality


def test_code_usage_counts_and_perplexity():
  used, ppl = id_quality.code_usage(np.array([0, 0, 1, 1]), 4)
  assert used == 2 and abs(ppl - 2.0) < 1e-9


def test_quality_row_reports_collisions_before_and_after():
  data = sequences.make_synthetic(num_users=50, num_items=60, seed=0)
  item_ids = ids.HierarchicalKMeansIds(num_levels=1, branching=4).fit(data)
  row = id_quality.quality_row('synthetic', 'hkmeans', item_ids, 0.5)
  assert row['collisions_before'] == 60 - len(np.unique(item_ids.codes[1:, :1]))
  assert row['collisions_after'] == 0 and row['levels'] == 2
  schemes = id_quality.make_schemes(['atomic', 'lcrec'], None, 'synthetic', 10)
  assert list(schemes) == ['atomic']  # no LC-Rec file for the synthetic set
