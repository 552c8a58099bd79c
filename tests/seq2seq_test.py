import numpy as np

from genrec.retrieval import seq2seq


def test_seq2seq_arrays_shift_targets_right():
  a = seq2seq.arrays([[5, 6, 7]], [[9, 8]], input_len=4, target_len=3)
  np.testing.assert_array_equal(a['encoder_input_tokens'], [[5, 6, 7, 0]])
  np.testing.assert_array_equal(a['decoder_target_tokens'], [[9, 8, 0]])
  np.testing.assert_array_equal(a['decoder_input_tokens'], [[0, 9, 8]])
  np.testing.assert_array_equal(a['decoder_loss_weights'], [[1, 1, 0]])
