#include "tools/field/week.h"

#include "absl/random/distributions.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace hamlet::field {

std::string VietnameseText(std::mt19937_64& gen, size_t length) {
  static const std::vector<std::string> kWords = {
      "tranh", "chấp", "đất",   "đai",  "ranh",  "giới", "giữa",  "hai",  "hộ",    "gia",   "đình",   "ông",
      "bà",    "thôn", "khu",   "phố",  "hoà",   "giải", "viên",  "đã",   "mời",   "các",   "bên",    "đến",
      "nhà",   "văn",  "hoá",   "để",   "trao",  "đổi",  "về",    "lối",  "đi",    "chung", "nước",   "tưới",
      "ruộng", "vay",  "nợ",    "tiền", "không", "trả",  "đúng",  "hạn",  "xích",  "mích",  "hàng",   "xóm",
      "tiếng", "ồn",   "chăn",  "nuôi", "gà",    "vịt",  "làm",   "ảnh",  "hưởng", "môi",   "trường", "sau",
      "buổi",  "họp",  "thống", "nhất", "cam",   "kết",  "thực",  "hiện", "theo",  "thoả",  "thuận",  "biên",
      "bản",   "ký",   "tên",   "xác",  "nhận",  "của",  "trưởng"};
  std::string text;
  while (text.size() < length) {
    if (!text.empty()) text += ' ';
    text += kWords[absl::Uniform<size_t>(gen, 0, kWords.size())];
  }
  return text;
}

absl::StatusOr<WeekOfWork> RecordWeekOfWork(FieldDevice& phone, int cases, int tips, int edits,
                                            const std::string& author, uint64_t seed) {
  std::mt19937_64 gen(seed);
  WeekOfWork work;
  for (int i = 0; i < cases + tips; ++i) {
    hamlet::v1::Record draft;
    draft.set_unit_code(absl::StrFormat("07132-K%02d", 1 + i % 12));
    draft.set_author(author);
    if (i < cases) {
      hamlet::v1::MediationCase* c = draft.mutable_mediation_case();
      c->set_summary(VietnameseText(gen, absl::Uniform<size_t>(gen, 200, 600)));
      c->set_status(hamlet::v1::MEDIATION_STATUS_RECEIVED);
      c->set_round(1);
      c->set_dispute_type(hamlet::v1::DISPUTE_TYPE_LAND);
      for (int p = 0; p < 2; ++p) {
        hamlet::v1::Party* party = c->add_parties();
        party->set_id(absl::StrCat("p", p + 1));
        party->set_name(p == 0 ? "Nguyễn Văn Bình" : "Trần Thị Hoa");
        party->set_age(30 + p * 12);
        party->set_address(absl::StrFormat("Khu %d, phường Quảng Yên", 1 + i % 12));
      }
    } else {
      hamlet::v1::SecurityTip* tip = draft.mutable_security_tip();
      tip->set_summary(VietnameseText(gen, absl::Uniform<size_t>(gen, 100, 300)));
      tip->set_category(hamlet::v1::TIP_CATEGORY_GAMBLING);
    }
    absl::StatusOr<hamlet::v1::Record> created = phone.Create(draft);
    if (!created.ok()) return created.status();
    work.ids.push_back(created->id());
  }
  for (int i = 0; i < edits && cases > 0; ++i) {
    hamlet::v1::MediationCase body;
    body.set_summary(VietnameseText(gen, absl::Uniform<size_t>(gen, 200, 600)));
    absl::StatusOr<hamlet::v1::Record> edited =
        phone.Edit(work.ids[static_cast<size_t>(i % cases)], body, {hamlet::v1::MediationCase::kSummaryFieldNumber});
    if (!edited.ok()) return edited.status();
    ++work.edits;
  }
  return work;
}

}  // namespace hamlet::field
